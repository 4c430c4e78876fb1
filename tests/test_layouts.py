import pytest

from benchmark.models.layouts import Layout, LayoutError, enumerate_layouts, layout_from_index, layout_index


def test_parse_print_round_trip():
    text = "[[{0,1,2}], [{0,1,2}], [{0},{1,2}], [{0},{1,2}], [{0},{1},{2}]]"
    layout = Layout.parse(text)
    assert str(layout) == "[[{0,1,2}], [{0,1,2}], [{0},{1,2}], [{0},{1,2}], [{0},{1},{2}]]"
    assert Layout.parse(str(layout)) == layout
    assert Layout.from_sets(layout.to_json()) == layout
    # set order inside a block and JSON brackets do not matter
    assert Layout.parse("[[[2,1,0]],[[0,1,2]],[[2,1],[0]],[[1,2],[0]],[[2],[1],[0]]]") == layout
    assert layout.num_tasks == 3 and layout.num_blocks == 5
    assert layout.shared_blocks == 2 and layout.num_block_copies == 1 + 1 + 2 + 2 + 3
    assert layout.branch_block(0, 1) == 2 and layout.branch_block(1, 2) == 4


def test_ind_and_as():
    ind = Layout.parse("IND", num_tasks=3)
    shared = Layout.parse("as", num_tasks=5)
    assert ind.is_independent and ind.name == "IND" and ind.num_blocks == 5
    assert shared.is_all_shared and shared.name == "AS" and shared.num_tasks == 5
    assert ind.branch_block(0, 1) == 0 and shared.branch_block(0, 4) == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[{0,1,2}], [{0,1}], [{0},{1},{2}]]", "task 2 is missing in block 1"),
        ("[[{0,1,2}], [{0,1},{1,2}], [{0},{1},{2}]]", "task 1 is in two task sets of block 1"),
        ("[[{0,1,2}], [{0},{1,2}], [{0,1},{2}]]", "merges tasks that were split in block 1"),
        ("[[{0,1,2}], [{0,1,2}]]", "has 2 blocks, expected 5"),
        ("[[{0,1,2}], [{0,1,2}], [{0,1,2}], [{0,1,2}], [{0,1,2}, {}]]", "empty task set"),
        ("[[{0,1,2}], [{0,1,2}], [{0,1,3}], [{0,1,2}], [{0,1,2}]]", "block 2 has task 3"),
        ("[[{0,a}]]", "unexpected characters 'a'"),
        ("[[{0,1}]", "not well formed"),
        ("IND", "needs the number of tasks"),
    ],
)
def test_malformed_layouts_are_named(text, message):
    with pytest.raises(LayoutError, match=message):
        Layout.parse(text, num_blocks=5 if "expected 5" in message else None)


def test_wrong_number_of_tasks():
    with pytest.raises(LayoutError, match="has 3 tasks, expected 5"):
        Layout.parse("[[{0,1,2}]]", num_tasks=5)


def test_enumeration_sizes():
    assert len(enumerate_layouts(3, 5)) == 51
    assert len(enumerate_layouts(5, 5)) == 7556
    layouts = enumerate_layouts(3)
    assert layouts[0].is_all_shared
    assert len(set(layouts)) == len(layouts)
    # the 3-task design space is every tree: 1 + 5*3 one-cut + rest; spot-check the first cut
    assert str(layouts[1]) == "[[{0},{1,2}], [{0},{1,2}], [{0},{1,2}], [{0},{1,2}], [{0},{1,2}]]"


@pytest.mark.parametrize(("key", "num_tasks"), [("nyuv2_resnet34", 3), ("taskonomy_resnet34", 5)])
def test_paper_indices_are_reproduced(paper_layouts, key, num_tasks):
    layouts = enumerate_layouts(num_tasks)
    checked = 0
    for model in paper_layouts[key]["models"]:
        if model["layout"] is None:
            continue
        layout = Layout.from_sets(model["layout"])
        if model["index"] == "AS":
            assert layout_index(layout) == 0
        elif model["index"] == "IND":
            assert layout.is_independent
        else:
            assert layout_index(layout) == int(model["index"])
            assert layout_from_index(int(model["index"]), num_tasks) == layout
            assert layouts[int(model["index"])] == layout
        checked += 1
    assert checked == len([m for m in paper_layouts[key]["models"] if m["layout"] is not None])


def test_recovered_layouts_of_the_paper(paper_layouts):
    """The paper lists five models without their layout; the enumeration recovers them and their
    parameter counts agree with the tables (checked in test_models)."""
    missing = {m["index"] for k in ("nyuv2_resnet34", "taskonomy_resnet34")
               for m in paper_layouts[k]["models"] if m["layout"] is None}
    assert missing == {"35", "11", "21", "36", "352"}
    assert str(layout_from_index(35, 3)) == "[[{0,1,2}], [{0,1,2}], [{0,2},{1}], [{0},{1},{2}], [{0},{1},{2}]]"
    assert str(layout_from_index(352, 5)).startswith("[[{0},{1,2,3,4}]")


def test_index_out_of_range():
    with pytest.raises(LayoutError, match=r"0\.\.50"):
        layout_from_index(51, 3)
