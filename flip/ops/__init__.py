"""Running a network for a long time: secrets at rest, certificates, service units, health checks, the trial
set-up on one machine."""
