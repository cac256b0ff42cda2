"""The Ray path: Ray Data actor-pool encoding matches in-process encoding."""

import pytest
import ray

from revela.evaluation.beir import write_beir
from revela.evaluation.run import evaluate, resolve_model_path
from revela.evaluation.settings import EvalSettings

pytestmark = pytest.mark.slow
MODEL = "all-minilm-l6-v2"
WORDS = "retrieval dense vector index query passage encoder model token batch actor cluster".split()
# lengths vary a lot, so the length-sorted blocks and batches differ in padding
CORPUS = {f"d{i}": ("", " ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 + 7 * i))) for i in range(14)}
QUERIES = {f"q{i}": " ".join(WORDS[(2 * i + j) % len(WORDS)] for j in range(2 + i)) for i in range(6)}
QRELS = {f"q{i}": {f"d{i}": 1, f"d{i + 3}": 1} for i in range(6)}


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("ray") / "synthetic", CORPUS, QUERIES, QRELS)


def read_trec(path):
    run = {}
    for line in open(path):
        qid, _, did, _, score, _ = line.split()
        run.setdefault(qid, {})[did] = float(score)
    return run


@pytest.fixture(scope="module")
def local(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.json"
    return evaluate(EvalSettings.of(model=MODEL, datasets=[data], output=out, encoder="local", batch_size=4),
                    progress=False, show_table=False)


def test_actor_pool_encoder_matches_in_process(cluster, data, local, tmp_path):
    pooled = evaluate(EvalSettings.of(model=MODEL, datasets=[data], output=tmp_path / "ray.json", encoder="ray",
                                      batch_size=4, num_actors=2), progress=False, show_table=False)
    assert pooled["settings"]["encoder"] == "ray" and local["settings"]["encoder"] == "local"
    assert pooled["model"]["protocol"] == local["model"]["protocol"]
    a = read_trec(local["datasets"]["synthetic"]["run_file"])
    b = read_trec(pooled["datasets"]["synthetic"]["run_file"])
    assert a.keys() == b.keys() == QUERIES.keys()
    for q in a:  # every query-doc cosine agrees: queries and passages were encoded identically
        assert a[q].keys() == b[q].keys() == CORPUS.keys()
        assert all(abs(a[q][d] - b[q][d]) < 1e-5 for d in a[q])
    for m in ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_100"):
        assert pooled["datasets"]["synthetic"][m] == pytest.approx(local["datasets"]["synthetic"][m])
