import pytest
import torch

from earl.layout import IGNORE_INDEX, LayoutError, build_layout_for_tokenizer


@pytest.fixture(scope="module")
def layout(text_tokenizer):
    return build_layout_for_tokenizer(text_tokenizer, codebook_size=64)


def test_image_serialisation_follows_emu3_format(layout):
    v = layout.vocab
    codes = torch.tensor([[1, 2, 3], [4, 5, 6]])
    ids = layout.image_tokens(codes)
    assert ids[0] == v.boi and ids[-2:] == [v.eof, v.eoi]
    img = ids.index(v.img)
    assert layout.tok.decode(ids[1:img]).replace(" ", "") == "2*3"
    body = ids[img + 1 : -2]
    assert body == [1 + v.image_offset, 2 + v.image_offset, 3 + v.image_offset, v.eol,
                    4 + v.image_offset, 5 + v.image_offset, 6 + v.image_offset, v.eol]


@pytest.mark.parametrize("thinking", [None, "the red circle blue"])
def test_example_roundtrip_and_loss_mask(layout, thinking):
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(0, 64, (4, 5), generator=g), torch.randint(0, 64, (4, 5), generator=g)
    ex = layout.example("make the red circle blue", src, tgt, thinking=thinking)
    assert not any(ex.loss_mask[: ex.prompt_len]) and all(ex.loss_mask[ex.prompt_len :])
    prompt, completion = ex.input_ids[: ex.prompt_len], ex.input_ids[ex.prompt_len :]
    assert torch.equal(layout.parse_image(prompt[prompt.index(layout.vocab.boi):], 4, 5), src)
    assert torch.equal(layout.parse_image(completion, 4, 5), tgt)
    assert layout.parse_thinking(completion) == thinking
    assert completion[-1] == layout.ids.eos


def test_collate_left_pads_and_masks(layout):
    src = torch.zeros(2, 2, dtype=torch.long)
    a = layout.example("make the red circle blue", src, src)
    b = layout.example("remove", src, src)
    batch = layout.collate([a, b])
    n = len(a.input_ids)
    pad = n - len(b.input_ids)
    assert pad > 0
    assert batch["input_ids"].shape == (2, n)
    assert batch["attention_mask"][1, :pad].sum() == 0 and batch["attention_mask"][1, pad:].all()
    assert (batch["input_ids"][1, :pad] == layout.ids.pad).all()
    assert (batch["labels"][1, :pad] == IGNORE_INDEX).all()
    assert batch["position_ids"][1, pad] == 0 and batch["position_ids"][1, -1] == len(b.input_ids) - 1
    # labels are the ids exactly where the loss mask is set
    lab = batch["labels"][0]
    assert torch.equal(lab != IGNORE_INDEX, torch.tensor(a.loss_mask))


def test_malformed_output_raises_clear_errors(layout):
    v = layout.vocab
    good = layout.image_tokens(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(LayoutError, match="no <boi>"):
        layout.parse_image(good[1:])
    with pytest.raises(LayoutError, match="truncated"):
        layout.parse_image(good[:-5])
    bad_row = list(good)
    bad_row[bad_row.index(v.eol)] = v.image_offset  # a code where <eol> belongs
    with pytest.raises(LayoutError, match="row 0"):
        layout.parse_image(bad_row)
    with pytest.raises(LayoutError, match="expected 3\\*3"):
        layout.parse_image(good, 3, 3)
    with pytest.raises(LayoutError, match="codes must lie"):
        layout.image_tokens(torch.tensor([[64]]))
    with pytest.raises(LayoutError, match="instruction is empty"):
        layout.example("  ", torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))
