"""FAISS search: the default is exact, shards merge to the same answer, approximate indexes are close."""

import numpy as np
import pytest

from revela.evaluation.search import search, to_run


def unit(rng, n, d=24):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return unit(rng, 40), unit(rng, 2000)


def brute(q, d, k):
    s = q @ d.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, axis=1), idx


def test_flat_is_exact(data):
    q, d = data
    scores, idx = search(q, d, k=50)
    ref_s, ref_i = brute(q, d, 50)
    assert (idx == ref_i).all()
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_sharded_search_merges_to_the_exact_answer(data):
    q, d = data
    s1, i1 = search(q, d, k=30)
    s2, i2 = search(q, d, k=30, shard_size=333)  # last shard is short
    assert (i1 == i2).all()
    np.testing.assert_allclose(s1, s2, atol=1e-6)


def test_approximate_indexes_are_close(data):
    q, d = data
    _, exact = search(q, d, k=10)
    _, hnsw = search(q, d, k=10, index="HNSW32", params="efSearch=128")
    _, ivf = search(q, d, k=10, index="IVF16,Flat", params="nprobe=16")  # probes every list: exact again
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, hnsw)]) > 0.9
    assert (ivf == exact).all()


def test_k_larger_than_corpus_and_bad_input(data):
    q, d = data
    s, i = search(q, d[:7], k=100)
    assert i.shape == (40, 7) and sorted(i[0]) == list(range(7))
    with pytest.raises(ValueError, match="query dim 24 != document dim 12"):
        search(q, d[:, :12])
    with pytest.raises(ValueError, match="NaN"):
        search(np.full((1, 24), np.nan, np.float32), d)


def test_to_run_maps_ids_and_drops_padding():
    run = to_run(["q1", "q2"], ["a", "b", "c"], np.array([[0.9, 0.5], [0.7, -1.0]]), np.array([[2, 0], [1, -1]]))
    assert run == {"q1": {"c": pytest.approx(0.9), "a": pytest.approx(0.5)}, "q2": {"b": pytest.approx(0.7)}}
