"""Drive the FLARE API the way the admin console does, in a process of its own.

The FLARE API's connection threads outlive a session (and would keep a test process from exiting once the
system is stopped), so each call runs here and prints its result as JSON.

    python admin_client.py KIT USERNAME run JOB_FOLDER TIMEOUT   -> {"job_id", "finished", "status", ...}
    python admin_client.py KIT USERNAME wait JOB_ID TIMEOUT      -> {"job_id", "finished", "status", ...}
    python admin_client.py KIT USERNAME submit JOB_FOLDER 0      -> {"job_id"}
    python admin_client.py KIT USERNAME abort JOB_ID 0           -> {"info"}

A job that did not complete also gets "logs" (the server's job log) and "site_error_logs" (each site's).
"""

from __future__ import annotations

import json
import os
import sys


def site_error_logs(location: str | None) -> dict[str, str]:
    """The sites' error logs the server kept for the job (components named ERRORLOG_<site>)."""
    from pathlib import Path

    logs = {}
    for path in Path(location or "/nonexistent").rglob("ERRORLOG_*"):
        if path.is_file():
            logs[path.name.removeprefix("ERRORLOG_")] = path.read_text(errors="replace")
    return logs


def main() -> None:
    from nvflare.fuel.flare_api.api_spec import InternalError, MonitorReturnCode
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    kit, username, command, target, timeout = sys.argv[1:6]
    sess = new_secure_session(username, kit, timeout=30.0)
    try:
        if command in ("submit", "abort"):
            out = {"job_id": sess.submit_job(target)} if command == "submit" else {"info": str(sess.abort_job(target))}
            return _print(out)
        job_id = sess.submit_job(target) if command == "run" else target
        rc = sess.monitor_job(job_id, timeout=float(timeout), poll_interval=1.0)
        status = sess.get_job_meta(job_id).get("status")
        out = {"job_id": job_id, "finished": rc == MonitorReturnCode.JOB_FINISHED, "status": status}
        if status != "FINISHED:COMPLETED":
            out["logs"] = sess.get_job_logs(job_id, target="all")
            try:
                location = sess.download_job_components(job_id)
            except InternalError:  # no component stored (e.g. an aborted job whose sites logged no error)
                location = None
            out["site_error_logs"] = site_error_logs(location)
    finally:
        sess.close()
    _print(out)


def _print(out: dict) -> None:
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
