"""The report routes and the pages over HTTP (PostgreSQL, rolled back): sign-in and its cookie,
who may see what, content negotiation, downloads, and the cookie never changing anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app import repository
from app.deps import KEY_COOKIE
from tests.test_api import Api, assert_error, build_api
from tests.test_api_jobs import MISSING, sample_recommendation

pytestmark = pytest.mark.postgres

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
def api(session: Session, tmp_path: Path) -> Api:
    return build_api(session, tmp_path)


def finished_job(api: Api, who: str = "alice") -> str:
    dataset = api.dataset(who=who)
    job = api.submit(api.job_body(dataset["id"], tasks=["sentiment", "topic"]), who=who).json()
    repository.mark_running(session=api.session, job_id=job["id"])
    repository.save_recommendation(
        session=api.session, job_id=job["id"], body=sample_recommendation()
    )
    repository.finish_job(session=api.session, job_id=job["id"], status="succeeded")
    api.session.commit()
    return str(job["id"])


def sign_in(api: Api, who: str = "alice", next_path: str = "/ui/jobs") -> str:
    response = api.client.post(
        "/ui/login", data={"key": api.keys[who], "next": next_path}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    cookie = response.headers["set-cookie"]
    assert f"{KEY_COOKIE}=" in cookie and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert "expires" not in cookie.lower() and "max-age" not in cookie.lower()  # session only
    return str(response.headers["location"])


def test_the_report_for_its_owner(api: Api) -> None:
    job_id = finished_job(api)
    page = api.client.get(f"/recommendations/{job_id}/report", headers=api.auth())
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.text.count('class="pair-cell') == 2  # two tasks: one pair, two heatmaps
    assert "Train one multi-task model for all 2 tasks {sentiment, topic}" in page.text
    svg = api.client.get(f"/recommendations/{job_id}/heatmaps/grad.svg", headers=api.auth())
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<?xml") and 'xmlns="http://www.w3.org/2000/svg"' in svg.text
    assert f'filename="{job_id}-grad.svg"' in svg.headers["content-disposition"]
    down = api.client.get(f"/recommendations/{job_id}/download", headers=api.auth())
    assert down.status_code == 200 and "attachment" in down.headers["content-disposition"]
    same = api.client.get(f"/recommendations/{job_id}", headers=api.auth())
    assert down.json() == same.json()
    bad = api.client.get(f"/recommendations/{job_id}/heatmaps/loss.svg", headers=api.auth())
    assert_error(bad, 422, "metric", "'cka' or 'grad'")


def test_sign_in_keeps_the_key_in_a_session_cookie(api: Api) -> None:
    job_id = finished_job(api)
    report = f"/recommendations/{job_id}/report"
    # A browser without a key goes to the sign-in page, and comes back after it.
    first = api.client.get(report, headers=HTML, follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == f"/ui/login?next={report}"
    form = api.client.get(first.headers["location"])
    assert form.status_code == 200 and f'value="{report}"' in form.text
    assert sign_in(api, next_path=report) == report
    page = api.client.get(report, headers=HTML)
    assert page.status_code == 200 and "pair-cell" in page.text
    assert api.client.get(f"/recommendations/{job_id}/download").status_code == 200
    assert api.client.get(f"/recommendations/{job_id}/heatmaps/cka.svg").status_code == 200
    jobs = api.client.get("/ui/jobs")
    assert jobs.status_code == 200 and job_id in jobs.text and "alice" in jobs.text
    # Signing out forgets the key.
    out = api.client.post("/ui/logout", follow_redirects=False)
    assert out.status_code == 303 and KEY_COOKIE in out.headers["set-cookie"]
    api.client.cookies.clear()
    assert api.client.get("/ui/jobs", follow_redirects=False).status_code == 303


def test_the_cookie_changes_nothing_and_reads_no_api_route(api: Api) -> None:
    job_id = finished_job(api)
    dataset = api.dataset()
    sign_in(api)
    # The JSON API takes only the Authorization header.
    assert_error(api.client.get(f"/recommendations/{job_id}"), 401, None, "authentication")
    assert_error(api.client.get("/jobs"), 401, None, "authentication")
    assert_error(api.client.post(f"/jobs/{job_id}/cancel"), 401, None, "authentication")
    assert_error(
        api.client.post("/jobs", json=api.job_body(dataset["id"])), 401, None, "authentication"
    )
    assert_error(api.client.delete(f"/datasets/{dataset['id']}"), 401, None, "authentication")
    assert api.client.get(f"/datasets/{dataset['id']}", headers=api.auth()).status_code == 200


def test_sign_in_errors_and_open_redirects(api: Api) -> None:
    wrong = api.client.post("/ui/login", data={"key": "tg_nope", "next": "/ui/jobs"})
    assert wrong.status_code == 401
    assert "key: that API key is unknown or has been revoked" in wrong.text
    assert "set-cookie" not in wrong.headers
    revoked = api.client.post("/ui/login", data={"key": api.keys["revoked"]})
    assert revoked.status_code == 401
    empty = api.client.post("/ui/login", data={"key": "  "})
    assert empty.status_code == 401 and "key: enter your API key" in empty.text
    for target in ("//evil.example/x", "https://evil.example/", "\\\\evil", "javascript:x"):
        api.client.cookies.clear()
        response = api.client.post(
            "/ui/login",
            data={"key": api.keys["alice"], "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == "/ui/jobs", target
    # A key revoked after sign-in stops working at once in this process.
    api.client.cookies.clear()
    sign_in(api)
    repository.revoke_api_key(session=api.session, name_or_prefix="alice")
    api.session.commit()
    api.app.state.key_cache.clear()
    stale = api.client.get("/ui/jobs")
    assert stale.status_code == 401 and "no longer valid" in stale.text


def test_owners_see_only_their_own(api: Api) -> None:
    job_id = finished_job(api)
    bob = api.auth("bob")
    for url in (
        f"/recommendations/{job_id}/report",
        f"/recommendations/{job_id}/heatmaps/cka.svg",
        f"/recommendations/{job_id}/download",
    ):
        assert_error(api.client.get(url, headers=bob), 404, None, "no job with id")
        assert_error(api.client.get(url), 401, None, "authentication required")
        assert_error(api.client.get(url, headers=api.auth("revoked")), 401, None, "authentication")
    page = api.client.get(f"/recommendations/{job_id}/report", headers={**bob, **HTML})
    assert page.status_code == 404 and "No such job" in page.text and "pair-cell" not in page.text
    sign_in(api, "bob")
    listing = api.client.get("/ui/jobs")
    assert listing.status_code == 200 and job_id not in listing.text
    state = api.client.get("/ui/jobs/state", params={"ids": f"{job_id},{MISSING},junk"})
    assert state.status_code == 200 and state.json() == {"data": []}


def test_a_report_that_is_not_ready(api: Api) -> None:
    dataset = api.dataset()
    job = api.submit(api.job_body(dataset["id"])).json()
    url = f"/recommendations/{job['id']}/report"
    assert_error(api.client.get(url, headers=api.auth()), 409, None, "is queued")
    page = api.client.get(url, headers={**api.auth(), **HTML})
    assert page.status_code == 409 and "is queued" in page.text
    assert_error(
        api.client.get(f"/recommendations/{MISSING}/report", headers=api.auth()),
        404,
        None,
        "no job",
    )
    assert_error(
        api.client.get("/recommendations/not-an-id/report", headers=api.auth()), 404, None, "UUID"
    )


def test_the_jobs_state_route_follows_progress(api: Api) -> None:
    dataset = api.dataset()
    job = api.submit(api.job_body(dataset["id"])).json()
    sign_in(api)
    repository.mark_running(session=api.session, job_id=job["id"])
    repository.update_progress(
        session=api.session, job_id=job["id"], stage="finetune", progress=0.4
    )
    api.session.commit()
    state = api.client.get("/ui/jobs/state", params={"ids": job["id"]}).json()["data"]
    assert [(s["id"], s["status"], s["stage"], s["progress"]) for s in state] == [
        (job["id"], "running", "finetune", 0.4)
    ]
    page = api.client.get("/ui/jobs", params={"status": "running"})
    assert f'data-id="{job["id"]}"' in page.text and 'data-status="running"' in page.text
    other = api.client.get("/ui/jobs", params={"status": "failed"})
    assert f'data-id="{job["id"]}"' not in other.text and "No jobs that are failed" in other.text
    api.client.cookies.clear()
    assert api.client.get("/ui/jobs/state", params={"ids": job["id"]}).status_code == 401


def test_the_jobs_page_pages(api: Api) -> None:
    from tests.test_api_jobs import make_job

    api.dataset()
    ids = [make_job(api).id for _ in range(23)]
    sign_in(api)
    first = api.client.get("/ui/jobs")
    assert first.status_code == 200
    shown = [i for i in ids if f'data-id="{i}"' in first.text]
    assert len(shown) == 20 and "Older jobs" in first.text
    older = first.text.split("Older jobs")[0].rsplit('href="', 1)[1].split('"')[0]
    second = api.client.get(older.replace("&amp;", "&"))
    rest = [i for i in ids if f'data-id="{i}"' in second.text]
    assert sorted(shown + rest) == sorted(ids) and "Older jobs" not in second.text
    # A cursor that is not one shows the first page rather than an error.
    assert api.client.get("/ui/jobs", params={"cursor": "!!"}).status_code == 200


def test_sign_in_and_out_from_another_site_are_refused(api: Api) -> None:
    key = api.keys["alice"]
    for headers in (
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ):
        response = api.client.post(
            "/ui/login", data={"key": key}, headers=headers, follow_redirects=False
        )
        assert response.status_code == 403, headers
        assert "set-cookie" not in response.headers
    same = api.client.post(
        "/ui/login",
        data={"key": key},
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert same.status_code == 303 and KEY_COOKIE in same.headers["set-cookie"]
    out = api.client.post(
        "/ui/logout", headers={"Sec-Fetch-Site": "cross-site"}, follow_redirects=False
    )
    assert out.status_code == 303 and "set-cookie" not in out.headers  # still signed in


def test_the_cookie_holds_a_signed_token_not_the_key(api: Api) -> None:
    from datetime import timedelta

    from app.tables import ApiKey, utcnow

    sign_in(api)
    token = api.client.cookies[KEY_COOKIE]
    assert api.keys["alice"] not in token and token.startswith("s1.")
    assert api.client.get("/ui/jobs").status_code == 200
    # Tampered, or made for another key, or expired: not a session.
    version, key_id, expiry, mac = token.split(".")
    bob_row = api.session.query(ApiKey).filter_by(name="bob").one()
    forged = [
        f"{version}.{key_id}.{int(expiry) + 3600}.{mac}",  # a longer life
        f"{version}.{bob_row.id}.{expiry}.{mac}",  # another key's id
        f"{version}.{key_id}.{expiry}.{'0' * 64}",
        "s1.x.y.z",
        api.keys["alice"],  # the raw key is not a session either
    ]
    alice_row = api.session.get(ApiKey, key_id)
    assert alice_row is not None
    expired = repository.session_token(key=alice_row, expires=utcnow() - timedelta(seconds=1))
    for bad in [*forged, expired]:
        api.client.cookies.clear()
        api.client.cookies.set(KEY_COOKIE, bad)
        assert api.client.get("/ui/jobs/state", params={"ids": MISSING}).status_code == 401, bad
    # A valid token stops when its key is revoked.
    api.client.cookies.clear()
    api.client.cookies.set(KEY_COOKIE, token)
    assert api.client.get("/ui/jobs/state", params={"ids": MISSING}).status_code == 200
    repository.revoke_api_key(session=api.session, name_or_prefix="alice")
    api.session.commit()
    assert api.client.get("/ui/jobs/state", params={"ids": MISSING}).status_code == 401
