"""Starting and stopping the local stack: Triton and every service as processes on loopback."""
