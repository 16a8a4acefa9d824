# Pinned versions of every service dev/testenv builds. Changing one changes its cache key,
# so the next `dev/testenv up` rebuilds just that piece.
KUBE_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
NATS_VERSION=v2.12.15
KAFKA_VERSION=4.1.1
LOG4J_VERSION=2.25.3
SLF4J_VERSION=2.0.17
