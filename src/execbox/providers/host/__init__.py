"""Host primitives shared by the providers that run on this machine (local, and docker for what it reads of
its containers from the host): cgroups, the seccomp filter, openat2 file access beneath a workdir, and
memory-stall detection."""
