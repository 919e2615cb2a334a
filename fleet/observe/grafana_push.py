"""``fleet dashboards push``: create or update the datasource, folder and dashboards in a Grafana
through grafana-client (the maintained fork of grafana-api). Idempotent: pushing twice leaves the
same state (fixed uids, ``overwrite: true``).

    push(grafana_url, token, prometheus_url)   # raises PushError with one clear line
"""

from __future__ import annotations

from fleet.observe.dashboards import (
    DATASOURCE_NAME,
    DATASOURCE_UID,
    FOLDER_TITLE,
    FOLDER_UID,
    all_dashboards,
)


class PushError(RuntimeError):
    pass


def push(grafana_url: str, token: str, prometheus_url: str, timeout_s: float = 10.0) -> list[str]:
    """Returns what it did, one line per object."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError, GrafanaUnauthorizedError

    api = GrafanaApi.from_url(grafana_url, credential=token or None, timeout=timeout_s)
    done = []
    try:
        datasource = {
            "name": DATASOURCE_NAME,
            "uid": DATASOURCE_UID,
            "type": "prometheus",
            "access": "proxy",
            "url": prometheus_url,
            "isDefault": False,
            "jsonData": {"timeInterval": "5s"},
        }  # deploy/'s scrape interval
        if _exists(lambda: api.datasource.get_datasource_by_uid(DATASOURCE_UID)):
            api.datasource.update_datasource_by_uid(DATASOURCE_UID, datasource)
            done.append(f"datasource {DATASOURCE_UID}: updated -> {prometheus_url}")
        else:
            api.datasource.create_datasource(datasource)
            done.append(f"datasource {DATASOURCE_UID}: created -> {prometheus_url}")
        if _exists(lambda: api.folder.get_folder(FOLDER_UID)):
            done.append(f"folder {FOLDER_UID}: exists")
        else:
            api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            done.append(f"folder {FOLDER_UID}: created")
        for uid, board in all_dashboards().items():
            api.dashboard.update_dashboard(
                {
                    "dashboard": {**board, "id": None},
                    "folderUid": FOLDER_UID,
                    "overwrite": True,
                    "message": "fleet dashboards push",
                }
            )
            done.append(f"dashboard {uid}: pushed")
    except GrafanaUnauthorizedError:
        raise PushError(f"{grafana_url} rejected the token (401 Unauthorized)") from None
    except GrafanaClientError as err:
        raise PushError(f"{grafana_url} refused a request: {err}") from None
    except Exception as err:  # connection refused, DNS, TLS, timeouts: the client's own types
        raise PushError(
            f"cannot reach Grafana at {grafana_url}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    return done


def _exists(get) -> bool:
    from grafana_client.client import GrafanaClientError, GrafanaUnauthorizedError

    try:
        get()
        return True
    except GrafanaUnauthorizedError:
        raise
    except GrafanaClientError as err:
        if getattr(err, "status_code", None) == 404:
            return False
        raise
