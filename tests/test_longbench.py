"""The long-context suite: generators (length, depth, distractors), the scorer, and end-to-end runs."""

import json
import re

import pytest
import torch
from conftest import hf_bpe_tokenizer, tiny_model

from memorizing_transformers_pytorch.longbench import TASKS, make_sample, score, training_documents
from memorizing_transformers_pytorch.longbench.runner import format_table, summarize
from memorizing_transformers_pytorch.longbench.tasks import COMMON, COMMON_REPEATS, RARE_REPEATS, uses_depth


def byte_count(text: str) -> int:
    return len(text.encode())


NEEDLE = re.compile(r"One of the special magic \w+ for (\S+) is: (\S+)\. ")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [4096, 40000])
@pytest.mark.parametrize("depth", [0.0, 0.35, 1.0])
def test_each_task_hits_its_length_and_puts_its_facts_at_the_depth(task, length, depth):
    haystack = "stdlib" if task == "variable_tracking" else "noise"
    sample = make_sample(task, length, depth, 3, byte_count, haystack=haystack)
    assert sample.units == byte_count(sample.prompt)
    assert abs(sample.units - length) <= 0.02 * length
    context = sample.context
    if task == "common_words":
        words = re.findall(r"^\d+\. (\w+)$", context, flags=re.M)
        counts = {w: words.count(w) for w in set(words)}
        assert len(sample.answers) == COMMON and all(counts[w] == COMMON_REPEATS for w in sample.answers)
        assert all(n == RARE_REPEATS for w, n in counts.items() if w not in sample.answers)
        assert not uses_depth(task)
        return
    # every expected item is written in the context, and the first fact starts where its depth says
    assert all(item in context for item in sample.answers)
    facts = len(sample.needle_offsets)
    assert facts >= 1
    slack = 200 * facts + 120  # the other facts and one haystack piece (a line of code, a JSON pair) around it
    assert abs(sample.needle_offsets[0] - depth * len(context)) <= slack
    if task == "passkey":
        assert context[sample.needle_offsets[0]:].startswith(f"The pass key is {sample.answers[0]}.")
    if task.startswith("niah_"):
        found = NEEDLE.findall(context)
        assert len(found) == facts
        assert context[sample.needle_offsets[0]:].startswith("One of the special magic numbers for")
    if task == "kv_retrieval":
        key = re.search(r'Key: "([0-9a-f-]+)"', sample.question).group(1)
        assert context[sample.needle_offsets[0]:].startswith(f'"{key}": "{sample.answers[0]}"')
        json.loads(context[context.index("{"):])  # a valid JSON object
    if task == "variable_tracking":
        value = re.search(r"the value (\d+)", sample.question).group(1)
        names = list(sample.answers)
        assert f"VAR {names[0]} = {value}. " in context
        for before, after in zip(names, names[1:]):
            assert f"VAR {after} = VAR {before}. " in context
        offsets = list(sample.needle_offsets)
        assert offsets == sorted(offsets)


@pytest.mark.parametrize("seed", range(20))
def test_distractors_never_carry_the_queried_key(seed):
    sample = make_sample("niah_multikey", 3000, 0.5, seed, byte_count)
    asked = re.search(r"for (\S+) mentioned", sample.question).group(1)
    pairs = NEEDLE.findall(sample.context)
    assert len(pairs) == 4 and [value for key, value in pairs if key == asked] == list(sample.answers)
    multivalue = make_sample("niah_multivalue", 3000, 0.5, seed, byte_count)
    pairs = NEEDLE.findall(multivalue.context)
    assert len({key for key, _ in pairs}) == 1 and sorted(v for _, v in pairs) == sorted(multivalue.answers)
    assert len(set(multivalue.answers)) == 4
    multiquery = make_sample("niah_multiquery", 3000, 0.5, seed, byte_count)
    pairs = NEEDLE.findall(multiquery.context)
    assert len({key for key, _ in pairs}) == 4 and [v for _, v in pairs].count(multiquery.answers[0]) == 1
    kv = make_sample("kv_retrieval", 3000, 0.5, seed, byte_count)
    key = re.search(r'Key: "([0-9a-f-]+)"', kv.question).group(1)
    assert kv.context.count(key) == 1


def test_samples_are_deterministic_for_a_seed_and_differ_across_seeds():
    for task in TASKS:
        a, b = (make_sample(task, 5000, 0.5, 7, byte_count) for _ in range(2))
        assert a == b
        assert make_sample(task, 5000, 0.5, 8, byte_count).prompt != a.prompt


@pytest.mark.parametrize("values", ["numbers", "words", "uuids"])
def test_needle_values_can_be_numbers_words_or_uuids(values):
    sample = make_sample("niah_single", 3000, 0.5, 0, byte_count, values=values)
    pattern = {"numbers": r"\d{7}", "words": r"[a-z]+-[a-z]+", "uuids": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-"
                                                                           r"[89ab][0-9a-f]{3}-[0-9a-f]{12}"}[values]
    assert re.fullmatch(pattern, sample.answers[0])
    assert f"special magic {values} for" in sample.context


def test_the_scorer_on_hand_written_answers():
    assert score(["7466763"], " 7466763.") == 1.0
    assert score(["7466763"], '"7466763", and more') == 1.0
    assert score(["7466763"], "\n\n7466763") == 1.0
    assert score(["7466763"], " 74667631") == 0.0  # a longer number is not the number
    assert score(["7466763"], " 1234567, 7466763") == 0.0  # exact match of the first item
    assert score(["7466763"], "The number is 7466763") == 0.0
    assert score(["abc-def"], " ABC-def.") == 1.0
    assert score(["abc-def"], " abc-defg") == 0.0
    assert score(["a1", "b2", "c3", "d4"], "b2, a1 and d4") == 0.75
    assert score(["a1", "b2"], "xa1 b22") == 0.0  # whole items only
    assert score(["VAR", "X"], "var x") == 1.0
    with pytest.raises(ValueError):
        score([], "anything")


def test_bad_inputs_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'needle'; the tasks are: passkey"):
        make_sample("needle", 4096, 0.5, 0, byte_count)
    with pytest.raises(ValueError, match="too short"):
        make_sample("common_words", 1000, 0.5, 0, byte_count)
    with pytest.raises(ValueError, match="depth must be in"):
        make_sample("passkey", 4096, 1.5, 0, byte_count)
    with pytest.raises(ValueError, match="unknown value kind"):
        make_sample("niah_single", 4096, 0.5, 0, byte_count, values="colours")
    with pytest.raises(FileNotFoundError, match="no such file"):
        make_sample("passkey", 4096, 0.5, 0, byte_count, haystack=str(tmp_path / "missing.txt"))
    small = tmp_path / "small.txt"
    small.write_text("one line of text\n" * 10)
    with pytest.raises(ValueError, match="out of reach: the haystack .* holds 10 lines"):
        make_sample("passkey", 100_000, 0.5, 0, byte_count, haystack=str(small))
    assert "one line of text" in make_sample("passkey", 200, 0.5, 0, byte_count, haystack=str(small)).context


def test_training_documents_end_with_their_answers():
    documents = training_documents(["passkey", "niah_single", "kv_retrieval"], "train", count=byte_count,
                                   documents=6, lengths=(600, 1200))
    assert len(documents) == 6 and documents == training_documents(
        ["passkey", "niah_single", "kv_retrieval"], "train", count=byte_count, documents=6, lengths=(600, 1200))
    assert documents != training_documents(["passkey", "niah_single", "kv_retrieval"], "valid", count=byte_count,
                                           documents=6, lengths=(600, 1200))
    for document in documents:
        assert 550 <= len(document) <= 1400 and document.endswith("\n")
    key = re.search(r"The pass key is (\d+)\.", documents[0]).group(1)
    assert documents[0].endswith(f"The pass key is {key}\n")
    with pytest.raises(ValueError, match="no common_words document fits"):
        training_documents(["common_words"], "train", count=byte_count, documents=1, lengths=(300, 600))


def test_every_task_end_to_end_on_a_tiny_checkpoint_of_ours(tmp_path, capsys):
    from memorizing_transformers_pytorch.checkpoint import save_checkpoint
    from memorizing_transformers_pytorch.cli import main

    save_checkpoint(tmp_path / "run", 1, tiny_model(num_tokens=258, xl_memory_layers=(2, 3), xl_max_memories=32),
                    state={})
    out = tmp_path / "bench"
    args = ["longbench", "--checkpoint", str(tmp_path / "run"), "--lengths", "3600", "--depths", "0.3",
            "--seq-len", "128", "--output", str(out)]
    main(args)
    printed = capsys.readouterr()
    data = json.loads((out / "results.json").read_text())
    records = data["samples"]
    # every task, memory on and off
    assert len(records) == 8 * 2 and {r["setting"] for r in records} == {"memory", "no-memory"}
    for r in records:
        assert 0.0 <= r["score"] <= 1.0 and abs(r["prompt_units"] - 3600) <= 72 and r["expected"]
    assert (out / "heatmap.png").stat().st_size > 0 and "| passkey | memory |" in (out / "summary.md").read_text()
    assert "| task | setting | 3600 |" in printed.out and "[16/16]" in printed.err
    main(args)  # everything is done: nothing runs again
    assert json.loads((out / "results.json").read_text())["samples"] == records
    assert "[1/" not in capsys.readouterr().err
    with pytest.raises(SystemExit):  # other settings into the same folder
        main([*args, "--seed", "1"])
    assert "made with seed=0, not 1" in capsys.readouterr().err


def test_summary_and_table_average_by_setting_task_and_length():
    records = [{"task": "passkey", "length": 4096, "depth": d, "sample": 0, "setting": "memory", "score": s}
               for d, s in ((0.1, 1.0), (0.5, 0.0), (0.9, 1.0))]
    records.append({"task": "common_words", "length": 4096, "depth": 0.5, "sample": 0, "setting": "memory",
                    "skipped": "too short"})
    assert summarize(records) == {"memory": {"passkey": {"4096": pytest.approx(2 / 3)}}}
    table = format_table(records)
    assert "| passkey | memory | 0.67 (3) |" in table and "| common_words | memory | - |" in table


def test_a_hugging_face_model_with_its_tokenizer_runs_every_setting(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM, LlamaConfig

    from memorizing_transformers_pytorch.cli import main
    from memorizing_transformers_pytorch.longbench.runner import load_model_under_test

    tokenizer = hf_bpe_tokenizer("The grass is green. The sky is blue. The pass key is 12345.\n" * 50, vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
                         eos_token_id=2)
    folder = tmp_path / "llama"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "bench"
    main(["longbench", "--checkpoint", str(folder), "--tasks", "passkey,niah_multiquery,common_words", "--lengths",
          "1024,2048", "--depths", "0.5", "--seq-len", "64", "--output", str(out)])
    records = json.loads((out / "results.json").read_text())["samples"]
    assert {r["setting"] for r in records} == {"memory", "no-memory", "plain"}
    # the common words' list alone is longer than 2,048 tokens of this tokenizer: skipped, with the reason
    assert [r for r in records if "skipped" in r] == [r for r in records if r["task"] == "common_words"]
    assert all("too short" in r["skipped"] for r in records if "skipped" in r)
    assert all(abs(r["prompt_units"] - r["length"]) <= 0.02 * r["length"] for r in records if "score" in r)
    capsys.readouterr()
    # memory off reads only the last segment: the same answer as reading every segment with the memory off
    model = load_model_under_test(str(folder), seq_len=64)
    ids = model.encode(make_sample("passkey", 1000, 0.5, 0, lambda t: len(model.encode(t))).prompt)
    from memorizing_transformers_pytorch.hf import MemorizingHFModel

    hf_model = MemorizingHFModel.from_pretrained(folder).eval()
    stream = [hf_model.config.clear_memories_on_sos_token_id, *ids]
    head = (len(stream) - (64 - 6)) % 64
    with torch.no_grad():
        hf_model.generate(torch.tensor([stream[:head]]), max_new_tokens=0, seq_len=head, use_knn_memory=False)
        full = hf_model.generate(torch.tensor([stream[head:]]), max_new_tokens=6, seq_len=64, temperature=0.0,
                                 use_knn_memory=False, eos_token_id=tokenizer.eos_token_id)
    assert model.answer(ids, "no-memory", 6) == full.tokens[0].tolist()
    with pytest.raises(ValueError, match="setting 'plane' is not available"):
        load_model_under_test(str(tmp_path / "llama"), seq_len=64).answer(ids, "plane", 4)
