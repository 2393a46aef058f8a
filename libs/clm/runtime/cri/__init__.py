"""The Kubernetes Container Runtime Interface (CRI): the gRPC API kubelet speaks to
containerd. `api_pb2*` are generated from the CRI proto (tools/setup/gen-cri)."""
