"""``python -m execbox.providers.cloud.handler``: the HTTP handler on $PORT (Cloud Run and Container Apps set
it; 8080 otherwise), on every interface unless EXECBOX_HANDLER_HOST says otherwise; one process, one loop
(runs are one at a time: the service's concurrency is 1)."""

from __future__ import annotations

import os

import uvicorn

from execbox.providers.cloud.handler import handler
from execbox.providers.cloud.handler.http import create_app


def main() -> None:
    h = handler()  # set up (and the cold-start reset done) before the first request
    uvicorn.run(create_app(h), host=os.environ.get("EXECBOX_HANDLER_HOST", "0.0.0.0"),
                port=int(os.environ.get("PORT", "8080")), workers=1, access_log=False, log_level="info")


if __name__ == "__main__":
    main()
