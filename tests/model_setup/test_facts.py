"""Model facts: a plain mapping in, typed facts out, readable back as a mapping."""

from __future__ import annotations

from layerzero.model_setup import ModelFacts, as_facts


def test_mapping_becomes_facts_with_extras_kept():
    facts = as_facts({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "name_or_path": "org/m",
                      "hidden_size": 64, "dtype": "bfloat16"})
    assert facts.model_type == "llama" and facts.architectures == ("LlamaForCausalLM",)
    assert facts.name_or_path == "org/m" and facts.extra == {"hidden_size": 64, "dtype": "bfloat16"}
    assert dict(facts) == {"model_type": "llama", "architectures": ("LlamaForCausalLM",), "name_or_path": "org/m",
                           "hidden_size": 64, "dtype": "bfloat16"}
    assert len(facts) == 5 and facts["dtype"] == "bfloat16"


def test_missing_facts_are_empty_and_a_single_architecture_is_a_tuple():
    facts = as_facts({"architectures": "GPT2LMHeadModel"})
    assert facts == ModelFacts(None, ("GPT2LMHeadModel",), "")
    assert facts.model_id() == "GPT2LMHeadModel"
    assert as_facts(facts) is facts
