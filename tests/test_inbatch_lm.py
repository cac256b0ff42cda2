"""revela.inbatch_lm: the LM's attention implementations under the in-batch attention."""


def test_eager_attention_is_supported_and_matches_sdpa():
    import torch

    from revela.config import RunConfig
    from revela.configbase import load_config
    from tiny import random_batch, tiny_revela

    assert load_config(RunConfig, None, ["model.lm.attn_implementation=eager"]).model.lm.attn_implementation == "eager"
    losses = []
    for impl in ("sdpa", "eager"):
        model = tiny_revela("gemma3", overrides={"lm": {"finetune": "full", "max_length": 32,
                                                         "attn_implementation": impl}})
        assert model.lm.config._attn_implementation == f"revela_{impl}"
        losses.append(model(random_batch()).loss)
    torch.testing.assert_close(losses[0], losses[1])
