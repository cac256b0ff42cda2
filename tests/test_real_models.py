"""The real offline models (registry packages): MiniLM retriever, SmolLM2-135M LM, and their protocols."""

import numpy as np
import pytest
import torch

from revela.config import ModelConfig
from revela.export import export_retriever
from revela.model import RevelaModel
from revela.protocol import EncodingProtocol
from revela.retriever import Retriever

pytestmark = pytest.mark.slow
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]


def test_minilm_encodes_like_its_reference_numbers():
    """all-MiniLM-L6-v2 with its own protocol (mean pooling, no prefixes): cosines 0.755 / 0.004 / 0.039."""
    r = Retriever.load("all-minilm-l6-v2")
    assert (r.protocol.pooling, r.protocol.query_prefix, r.protocol.max_length) == ("mean", "", 256)
    e = r.encode(SENTENCES, "passage")
    sims = e @ e.T
    assert sims[0, 1] == pytest.approx(0.755, abs=2e-3)
    assert sims[0, 2] == pytest.approx(0.004, abs=2e-3)
    assert sims[1, 2] == pytest.approx(0.039, abs=2e-3)


def test_revela_step_on_minilm_and_smollm2_learns_through_sim():
    cfg = ModelConfig.model_validate({
        "retriever": {"name": "all-minilm-l6-v2", "finetune": "full", "max_length": 32},
        "lm": {"name": "smollm2-135m", "finetune": "lora", "max_length": 32, "lora": {"r": 4, "alpha": 8}},
        "objective": {"temperature": 0.05, "v_norm": False},
    })
    model = RevelaModel.from_config(cfg)
    assert type(model.lm.get_base_model()).__name__ == "LlamaForCausalLM"
    assert model.lm.config._attn_implementation == "revela_sdpa"
    from revela.batch import GroupTokenizer

    code = ["def add(a, b):\n    return a + b", "def sub(a, b):\n    return a - b",
            "class Stack:\n    def push(self, x):\n        self.items.append(x)", "import os\nprint(os.getcwd())"]
    tok = GroupTokenizer(model.retriever.tokenizer, model.lm_tokenizer, model.retriever.protocol, 32, False)
    batch = {k: torch.from_numpy(v) for k, v in tok(code).items()}
    out = model(batch)
    assert 0.5 < float(out.pass2_loss) < 6.0  # a pretrained LM on real code, not a random one (~10.8)
    out.loss.backward()
    grads = [p.grad for p in model.retriever.parameters() if p.grad is not None]
    assert grads and sum(float(g.norm()) for g in grads) > 0


def test_eos_pooled_export_appends_eos_in_the_tokenizer(tmp_path):
    """A decoder retriever exported with EOS pooling encodes the same in ours and in sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from revela.assets import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    backbone = LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    backbone.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    EncodingProtocol(pooling="eos", query_prefix="query: ", passage_prefix="passage: ", max_length=16).save(tmp_path / "m")
    ours = Retriever.load(str(tmp_path / "m"))
    out = export_retriever(str(tmp_path / "m"), tmp_path / "export")
    st = SentenceTransformer(str(out), device="cpu")
    texts = ["hello world", "a much longer text that will be truncated " * 5]
    assert st.tokenizer("x")["input_ids"][-1] == tok.eos_token_id
    # the export carries the evaluation length (512 here: nothing declared), which sentence-transformers applies
    # to queries and passages alike; passages are encoded as `revela evaluate` encodes them
    from revela.evaluation.run import load_retriever

    reference = load_retriever(str(tmp_path / "m")).encode(texts, "passage")
    assert np.allclose(reference, st.encode(texts, prompt_name="document"), atol=1e-5)
    assert np.allclose(reference, Retriever.load(str(out)).encode(texts, "passage"), atol=1e-5)
    short = texts[:1]  # queries within the trained 16 tokens: the same in both
    assert np.allclose(ours.encode(short, "query"), st.encode(short, prompt_name="query"), atol=1e-5)
