"""The human feedback studio: a web app over `tuneloop.api` and `tuneloop.feedback`
(docs/studio.md). It sits above the API, beside the CLI: its pages call the same public
functions the CLI does, so nothing is reachable only from the browser."""

from __future__ import annotations


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    secure_cookies: bool | None = None,
    admin_name: str = "admin",
) -> None:
    """Run the studio (blocks until stopped); `tuneloop studio` calls this.

    On a registry without an admin, an admin account `admin_name` is created first and
    its random password printed once (there are no default credentials). secure_cookies:
    None marks the session cookie Secure when requests arrive over https (or from a TLS
    proxy that says so in X-Forwarded-Proto)."""
    import uvicorn

    from tuneloop.feedback import ensure_admin
    from tuneloop.studio.app import create_app

    made = ensure_admin(admin_name)
    if made is not None:
        user, password = made
        print(
            f"first start: created the admin account {user.name!r} with password {password}\n"
            "  (shown once: keep it; `tuneloop studio user password NAME` sets a new one)",
            flush=True,
        )
    if host not in ("127.0.0.1", "localhost", "::1") and secure_cookies is not True:
        print(
            f"warning: listening on {host} without TLS: passwords and session cookies cross "
            "the network in the clear; put the studio behind an https proxy",
            flush=True,
        )
    print(f"tuneloop studio on http://{host}:{port}", flush=True)
    uvicorn.run(
        create_app(secure_cookies=secure_cookies), host=host, port=port, log_level="warning"
    )
