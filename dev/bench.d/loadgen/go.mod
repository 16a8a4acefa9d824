module kubewire.dev/bench/loadgen

go 1.25
