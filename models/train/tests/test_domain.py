"""The demo domain's generator: reproducible, labels that match the pixels, edits that change
exactly one attribute."""
import numpy as np

from models.train import domain


def test_same_seed_same_clip():
    a = domain.sample_clip(np.random.default_rng(5))
    b = domain.sample_clip(np.random.default_rng(5))
    assert a == b
    assert np.array_equal(domain.render_clip(a), domain.render_clip(b))


def test_objects_stay_inside_and_apart():
    rng = np.random.default_rng(1)
    for _ in range(200):
        lab = domain.sample_clip(rng, two_prob=0.5)
        for o in lab["objects"]:
            p = np.asarray(o["path"])
            assert p.min() >= o["radius"] + 2 - 1e-6 and p.max() <= lab["size"] - o["radius"] - 2 + 1e-6
        if len(lab["objects"]) == 2:
            assert lab["objects"][0]["colour"] != lab["objects"][1]["colour"]


def test_pixels_show_the_labels():
    rng = np.random.default_rng(2)
    for _ in range(20):
        lab = domain.sample_clip(rng)
        frames = domain.render_clip(lab)
        for o in lab["objects"]:
            x, y = (int(round(v)) for v in o["path"][0])
            want = np.array(domain.OBJECT_COLOURS[o["colour"]])
            assert np.abs(frames[0, y, x].astype(int) - want).max() <= 1, (lab["caption"], o)
        corner = frames[0, 0, 0].astype(int)
        bg = np.array(domain.BACKGROUND_COLOURS[lab["background"]["colour"]])
        assert np.abs(corner - bg).max() <= domain.TEXTURE_AMPLITUDE + 1 or any(
            np.hypot(*(np.asarray(o["path"][0]) - 0.5)) < 2 * o["radius"] for o in lab["objects"])


def test_captions_follow_the_grammar():
    lab = {"size": 64, "frames": 1, "background": {"colour": "gray", "texture": "striped"},
           "objects": [{"shape": "square", "colour": "blue", "path": [[40, 10]]},
                       {"shape": "circle", "colour": "red", "path": [[10, 10]]}]}
    assert domain.caption(lab) == "a red circle and a blue square on a striped gray background"
    lab["background"]["texture"] = "plain"
    assert domain.caption(lab) == "a red circle and a blue square on a gray background"


def test_each_edit_changes_one_attribute():
    rng = np.random.default_rng(3)
    for _ in range(50):
        lab = domain.sample_clip(rng, two_prob=0.5)
        edits = domain.edits_for(lab, rng)
        assert [e["kind"] for e in edits] == ["colour", "shape", "background"]
        src = sorted(lab["objects"], key=lambda o: o["path"][0][0])
        for e in edits:
            assert e["prompt"] != lab["caption"]
            exp = e["expect"]
            changed = sum(a["shape"] != b["shape"] or a["colour"] != b["colour"] for a, b in zip(src, exp["objects"]))
            changed += exp["background"] != lab["background"]["colour"]
            assert changed == 1, e
            assert exp["texture"] == lab["background"]["texture"]
