"""The contract between an edge and a replicated cloud (`cloud_service.ray_app`): two HTTP headers.

The edge names a frame's session in `SESSION_HEADER` (Ray Serve's session header, which its proxy hands to the
request router: `cloud_service.ray_router`), so every frame of a session reaches the replica holding its cache; a
replica names itself in `REPLICA_HEADER` on every answer, so the edge knows where its sessions live and that a
failure of that replica lost them, and gives its own address in `REPLICA_URL_HEADER`, where the edge sends a
session's later frames without Ray's proxy. Imports nothing: Ray's proxy imports it with the router, without torch.
"""

SESSION_HEADER = "x-session-id"  # Ray Serve's default (RAY_SERVE_SESSION_ID_HEADER_KEY); set on frames and ends
REPLICA_HEADER = "x-edgesplit-replica"  # the answering replica's id (Ray Serve's replica unique id)
REPLICA_URL_HEADER = "x-edgesplit-replica-url"  # where the replica listens itself (`cloud_service.direct`)
