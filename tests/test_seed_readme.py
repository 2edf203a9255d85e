# ruff: noqa: E501  (the seed README code is kept verbatim)
"""The seed README's usage code, verbatim, with the shapes it promises."""

import torch


def test_seed_model_usage():
    from memorizing_transformers_pytorch import MemorizingTransformer

    model = MemorizingTransformer(
        num_tokens = 20000,                 # number of tokens
        dim = 512,                          # dimension
        dim_head = 64,                      # dimension per attention head
        depth = 8,                          # number of layers
        memorizing_layers = (4, 5),         # which layers to have ANN memories
        max_knn_memories = 2048,            # maximum ANN memories to keep (oldest ones will be discarded)
        num_retrieved_memories = 32,        # number of ANN memories to retrieve
        clear_memories_on_sos_token_id = 1, # clear passed in ANN memories automatically for batch indices which contain this specified SOS token id - otherwise, you can also manually iterate through the ANN memories and clear the indices before the next iteration
    )

    data = torch.randint(0, 20000, (2, 1024)) # mock data

    knn_memories = model.create_knn_memories(batch_size = 2) # create collection of KNN memories with the correct batch size (2 in example)

    logits, _ = model(data, knn_memories = knn_memories) # (1, 1024, 20000)
    # ... and so on

    assert logits.shape == (2, 1024, 20000)
    assert torch.isfinite(logits).all()
    assert len(knn_memories) == 2
    # every row without an <sos> token stored its whole segment
    for memory in knn_memories:
        for row in range(2):
            if not (data[row] == 1).any():
                assert memory.count[row] == 1024


def test_seed_memory_usage():
    from memorizing_transformers_pytorch import KNNMemory

    memory = KNNMemory(
        dim = 64,                   # dimension of key / values
        max_memories = 1024,        # maximum number of memories to keep (will throw out the oldest memories for now if it overfills)
        num_indices = 2             # this should be equivalent to batch dimension, as each batch keeps track of its own memories, expiring when it sees a new document
    )

    memory.add(torch.randn(2, 512, 2, 64))  # (batch, seq, key | value, feature dim)
    memory.add(torch.randn(2, 512, 2, 64))

    memory.clear([0]) # clear batch 0, if it saw an <sos>

    memory.add(torch.randn(2, 512, 2, 64))
    memory.add(torch.randn(2, 512, 2, 64))

    key_values, mask = memory.search(torch.randn(2, 512, 64), topk = 32)

    assert key_values.shape == (2, 512, 32, 2, 64)
    assert mask.shape == (2, 512, 32)
    assert mask.all()
    assert memory.count.tolist() == [1024, 1024]


def test_readme_usage_blocks_run_as_written():
    """Every README code block that starts with `import torch` runs as it is."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if b.startswith("import torch")]
    assert len(blocks) == 2
    for block in blocks:
        namespace = {}
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["key_values"].shape == (2, 512, 32, 2, 64)
