//! Leader election on a `coordination.k8s.io/v1` Lease (via `kube-lease-manager`): only the
//! holder watches and publishes. Losing the lease is reported as soon as the lease manager
//! sees it; dropping the elector releases the lease so a successor need not wait it out.

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::LeaderElectionConfig;

/// Holds this replica's candidacy.
pub struct Elector {
    rx: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
    /// This replica's holder identity on the Lease (see [`identity`]).
    pub identity: String,
    /// The Lease competed for, as `namespace/name` (for logs).
    pub lease: String,
}

/// The identity this replica uses: configured, else the pod name, else random.
pub fn identity(cfg: &LeaderElectionConfig) -> String {
    cfg.identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("kubewire-{:016x}", rand::random::<u64>()))
}

/// Starts competing for the lease.
pub async fn elect(
    client: kube::Client,
    cfg: &LeaderElectionConfig,
) -> Result<Elector, LeaseManagerError> {
    let namespace = cfg.namespace();
    let identity = identity(cfg);
    let manager = LeaseManagerBuilder::new(client, &cfg.lease_name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(cfg.lease_duration_seconds)
        .with_grace(cfg.renew_grace_seconds)
        .build()
        .await?;
    let (rx, task) = manager.watch().await;
    Ok(Elector {
        rx,
        task,
        identity,
        lease: format!("{namespace}/{}", cfg.lease_name),
    })
}

impl Elector {
    /// Waits until this replica's leadership is `leader`. `false` if the lease manager ended.
    pub async fn until(&mut self, leader: bool) -> bool {
        self.rx.wait_for(|l| *l == leader).await.is_ok()
    }

    /// Gives the lease up (the lease manager releases it when its channel closes).
    pub async fn release(self) {
        drop(self.rx);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!(lease = %self.lease, "lease released"),
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.lease, error = %e, "releasing the lease failed")
            }
            Err(e) => tracing::warn!(lease = %self.lease, error = %e, "lease manager task failed"),
        }
    }
}
