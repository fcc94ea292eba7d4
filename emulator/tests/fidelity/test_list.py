"""Lists: paging with list_next, filters (regex and AIP-160), orderBy, maxResults bounds."""

import pytest
from googleapiclient.errors import HttpError

from gce import Outcomes, error_reason, list_all, new_batch, route_body, wait_done

A_NAMES = [f"fid-a-{i}" for i in range(13)]
B_NAMES = [f"fid-b-{i}" for i in range(12)]


@pytest.fixture
def routes25(compute, emulator, project):
    """25 routes inserted in one batch; returns the names of every route the project has."""
    before, _ = list_all(compute.routes(), project=project)
    outcomes = Outcomes()
    batch = new_batch(emulator.base_url, outcomes)
    for i, name in enumerate(A_NAMES + B_NAMES):
        batch.add(
            compute.routes().insert(project=project, body=route_body(project, name, f"192.168.{i}.0/24")),
            request_id=name,
        )
    batch.execute()
    assert sorted(outcomes.results) == sorted(A_NAMES + B_NAMES)
    for name in A_NAMES + B_NAMES:
        wait_done(compute, project, outcomes.ok(name))
    return sorted([r["name"] for r in before] + A_NAMES + B_NAMES)


def test_paging_follows_next_page_token(compute, project, routes25):
    items, pages = list_all(compute.routes(), project=project, maxResults=10)
    names = [item["name"] for item in items]
    assert len(names) == len(set(names)), "an item came twice across pages"
    assert names == routes25, "every route exactly once, sorted by name"
    assert [len(p.get("items", [])) for p in pages[:-1]] == [10] * (len(pages) - 1)
    assert len(pages) == -(-len(routes25) // 10)
    assert "nextPageToken" not in pages[-1]
    for page in pages:
        assert page["kind"] == "compute#routeList"
        assert page["selfLink"].endswith(f"/projects/{project}/global/routes")


def test_order_by(compute, project, routes25):
    by_name, _ = list_all(compute.routes(), project=project, maxResults=7, orderBy="name")
    assert [i["name"] for i in by_name] == routes25
    newest_first, _ = list_all(
        compute.routes(), project=project, maxResults=7, orderBy="creationTimestamp desc"
    )
    stamps = [i["creationTimestamp"] for i in newest_first]
    assert sorted(i["name"] for i in newest_first) == routes25
    assert stamps == sorted(stamps, reverse=True)


def test_filters(compute, project, routes25):
    regex, _ = list_all(compute.routes(), project=project, filter="name eq fid-a-.*")
    assert sorted(i["name"] for i in regex) == sorted(A_NAMES)

    exact, _ = list_all(compute.routes(), project=project, filter='name = "fid-a-3"')
    assert [i["name"] for i in exact] == ["fid-a-3"]

    not_regex, _ = list_all(compute.routes(), project=project, filter="name ne fid-a-.*")
    assert sorted(i["name"] for i in not_regex) == sorted(set(routes25) - set(A_NAMES))

    either, _ = list_all(
        compute.routes(), project=project, filter='(name = "fid-a-3") OR (name = "fid-b-11")'
    )
    assert sorted(i["name"] for i in either) == ["fid-a-3", "fid-b-11"]

    both, _ = list_all(
        compute.routes(), project=project,
        filter='(destRange = "192.168.3.0/24") AND (name = "fid-a-3")',
    )
    assert [i["name"] for i in both] == ["fid-a-3"]

    paged, pages = list_all(compute.routes(), project=project, filter="name eq fid-b-.*", maxResults=5)
    assert [i["name"] for i in paged] == sorted(B_NAMES)
    assert len(pages) == 3

    none = compute.routes().list(project=project, filter='name = "no-such-route"').execute()
    assert none.get("items", []) == []
    assert "nextPageToken" not in none


def test_max_results_bounds(compute, project):
    page = compute.routes().list(project=project, maxResults=500).execute()
    assert page["kind"] == "compute#routeList"
    with pytest.raises(HttpError) as too_many:
        compute.routes().list(project=project, maxResults=501).execute()
    assert too_many.value.status_code == 400
    assert error_reason(too_many.value) == "invalid"
    assert "maxResults" in too_many.value.reason


def test_bad_filter_and_page_token_are_400(compute, project):
    with pytest.raises(HttpError) as bad_filter:
        compute.routes().list(project=project, filter="name ~~ (").execute()
    assert bad_filter.value.status_code == 400
    with pytest.raises(HttpError) as bad_token:
        compute.routes().list(project=project, pageToken="not-a-token").execute()
    assert bad_token.value.status_code == 400
