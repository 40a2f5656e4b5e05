"""The Python client against a real `halyard standalone` (conftest.py), and its spec writer."""

import csv
import os

import pytest

import halyard
from halyard import spec as spec_module

NAME = "campaign-response"


@pytest.fixture(scope="module")
def client(cluster):
    return halyard.Client(cluster["address"], cluster["key"])


@pytest.fixture(scope="module")
def trained(client, cluster):
    """The demo spec, submitted as a file (its relative data path read from its folder)."""
    job = client.submit(str(cluster["root"] / "examples" / "campaign-response.toml"))
    assert job["state"] in ("pending", "running"), job
    done = client.follow(job["id"], progress=False, timeout=300)
    return done


def responses(cluster, n):
    with open(cluster["root"] / "data" / "campaign" / "responses.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    for r in rows:
        r.pop("responded")
        for k, v in r.items():
            try:
                r[k] = float(v) if "." in v else int(v)
            except ValueError:
                pass
    return rows


def test_a_spec_file_trains_and_its_job_reads_back(client, trained):
    assert trained["state"] == "succeeded"
    assert trained["metrics"]["test_auc"] > 0.6, trained["metrics"]
    assert any(j["id"] == trained["id"] for j in client.jobs())
    assert client.job(trained["id"])["state"] == "succeeded"
    messages = [e["message"] for e in client.events(trained["id"])]
    # The log starts with the data's profile and holds the epochs.
    assert any(m.startswith("data: ") for m in messages), messages[:20]
    assert any("epoch 8/8" in m for m in messages), messages[-20:]
    versions = client.model(NAME)["versions"]
    assert versions[0]["version"] == 1 and versions[0]["job_id"] == trained["id"]


def test_a_report_is_one_page_that_reads_offline(client, trained, tmp_path):
    path = client.report(f"{NAME}@1", tmp_path / "report.html")
    html = open(path, encoding="utf-8").read()
    assert f"{NAME} version 1" in html
    for figure in ["roc", "pr", "calibration", "gains", "lift", "training"]:
        assert f'<figure id="{figure}"><svg' in html, figure
    # Self-contained: nothing to fetch.
    assert "<script" not in html and "<link" not in html and "src=" not in html
    # The newest version by name alone; a version that does not exist is explained.
    assert os.path.basename(client.report(NAME, tmp_path / "newest.html")) == "newest.html"
    with pytest.raises(halyard.HalyardError) as e:
        client.report(f"{NAME}@99", tmp_path / "none.html")
    assert e.value.status == 404 and "no version 99" in e.value.message, e.value


def test_deployed_it_scores_dicts_and_data_frames_alike(client, cluster, trained):
    deployed = client.deploy(NAME, 1)
    assert deployed["deployment"]["variants"] == [{"version": 1, "weight": 100}], deployed
    schema = client.schema(NAME)
    assert "age" in str(schema), schema
    rows = responses(cluster, 25)
    one = client.predict(NAME, rows[0])
    many = client.predict(NAME, rows)
    # A lone record goes through the plain arrays and a batch of 25 through candle's matrix
    # product: the same score but for the last bit of an f32 (docs/serving.md).
    assert len(many) == 25 and many[0]["version"] == one[0]["version"]
    assert many[0]["score"] == pytest.approx(one[0]["score"], rel=1e-6, abs=1e-7)
    assert all(0.0 <= p["score"] <= 1.0 and p["version"] == 1 for p in many)
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(rows, index=range(100, 125))
    scored = client.predict(NAME, frame)
    assert list(scored.index) == list(range(100, 125))
    assert list(scored["score"]) == [p["score"] for p in many]


def test_a_canary_is_promoted_and_rolled_back(client, cluster, trained):
    second = client.submit(str(cluster["root"] / "examples" / "campaign-response.toml"))
    client.follow(second["id"], progress=False, timeout=300)
    assert client.model(NAME)["versions"][0]["version"] == 2
    client.deploy(NAME, 1)
    canary = client.deploy(NAME, 2, percent=20)
    weights = {v["version"]: v["weight"] for v in canary["deployment"]["variants"]}
    assert weights == {1: 80, 2: 20}, canary
    promoted = client.promote(NAME)
    assert [v["version"] for v in promoted["deployment"]["variants"]] == [2], promoted
    back = client.rollback(NAME)
    assert {v["version"]: v["weight"] for v in back["deployment"]["variants"]} == {1: 80, 2: 20}, back
    client.deploy(NAME, 1)


def test_outcomes_fed_back_reach_the_experiment(client, trained):
    client.deploy(NAME, 1)
    answer = client.feedback(NAME, [{"version": 1, "converted": i % 4 == 0} for i in range(40)])
    assert answer["accepted"] == 40, answer
    report = client.experiment(NAME)
    assert report["variants"][0]["version"] == 1, report
    pd = pytest.importorskip("pandas")
    frame = client.experiment_frame(NAME)
    assert 1 in list(frame["version"])


def test_a_spec_as_a_dict_or_text_is_checked_by_the_cluster(client, cluster):
    spec = spec_module.loads((cluster["root"] / "examples" / "campaign-response.toml").read_text())
    spec["name"] = "from-a-dict"
    spec["train"]["epochs"] = 0
    with pytest.raises(halyard.HalyardError) as bad:
        client.submit(spec, base=str(cluster["root"] / "examples"))
    assert bad.value.status == 400 and "epochs" in bad.value.message, bad.value
    # A label the data lacks: accepted, then the job fails and says why.
    spec["train"]["epochs"] = 1
    spec["data"]["label"] = "bought"
    text = spec_module.dumps(spec)
    job = client.submit(text, base=str(cluster["root"] / "examples"))
    with pytest.raises(halyard.JobFailed) as failed:
        client.follow(job["id"], progress=False, timeout=300)
    assert "bought" in failed.value.message, failed.value
    with pytest.raises(halyard.HalyardError) as missing:
        client.submit("no-such-spec.toml")
    assert "no-such-spec.toml" in missing.value.message


def test_a_wrong_key_or_no_cluster_is_explained(cluster):
    wrong = halyard.Client(cluster["address"], "hk_0123456789ab_" + "0" * 64)
    with pytest.raises(halyard.HalyardError) as refused:
        wrong.jobs()
    assert refused.value.status == 401, refused.value
    nobody = halyard.Client("127.0.0.1:9", "hk_x")
    with pytest.raises(halyard.HalyardError) as unreachable:
        nobody.cluster()
    assert unreachable.value.status == 0 and "HALYARD_SCHEDULER" in unreachable.value.message


def test_the_key_of_a_local_standalone_is_found_like_the_cli_finds_it(cluster, monkeypatch):
    monkeypatch.delenv("HALYARD_KEY", raising=False)
    monkeypatch.setenv("HALYARD_KEY_FILE", str(cluster["root"] / "state" / "admin.key"))
    assert halyard.Client(cluster["address"]).key == cluster["key"]
    monkeypatch.setenv("HALYARD_SCHEDULER", cluster["address"])
    assert halyard.Client().cluster()["executors"], "no executor"
    # Never sent beyond this machine.
    assert halyard.Client("10.1.2.3:7070").key is None


def test_the_spec_writer_round_trips_every_shape_a_spec_has():
    spec = {
        "name": "x",
        "description": 'quotes " and \\ and\nlines',
        "data": {"label": "y", "exclude": ["id"], "crosses": [["a", "b"]], "types": {"nr.employed": "float"}},
        "features": {
            "sources": [{"name": "s", "path": "d.csv", "types": {"Spend": "int"}}, {"name": "t", "path": "t/"}],
            "sql": "SELECT \"Spend\" FROM s",
            "split": {"method": "hash", "key": "id", "test_percent": 20.0},
        },
        "train": {"epochs": 3, "learning_rate": 0.001, "publish": False},
    }
    assert spec_module.loads(spec_module.dumps(spec)) == spec
    resolved = spec_module.resolve_paths(spec, "/base")
    assert resolved["features"]["sources"][0]["path"] == "/base/d.csv"
    assert resolved["features"]["sources"][1]["path"] == "/base/t/"
    assert spec_module.resolve_paths({"data": {"source": "s3://b/k.csv"}}, "/x")["data"]["source"] == "s3://b/k.csv"
