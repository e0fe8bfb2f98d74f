"""The FL API service (``flip api serve``): FLIP's hub drives a network over HTTP through it.

It sits next to the FL server, holds one admin session (NVFlare's FLARE API, with an admin's startup kit) and
serves the routes FLIP's hub calls: stage a model's job from its app bundle (flip's job builder), submit it, list
jobs, abort one, and check the server's and the sites' status. See the README, "Driving a network over HTTP".

    app.py       the routes, errors and the key check
    schemas.py   the bodies (FLIP's names and shapes)
    staging.py   upload_app: trusts to sites, the job built and staged in the admin kit's transfer folder
    bundle.py    the bundle URLs allowed (s3:// of the bundle bucket, file:// under the bundle root) and fetched
    flare.py     the admin session, its errors, and FLIP's job and site statuses
    settings.py  FLIP_API_* settings, the key and the trust -> site mapping
    serve.py     the command: settings, the session, uvicorn
"""
