"""The shape-edit probe's mass measure (probe_shift.object_mass) on rendered clips: a circle's
mass is its labelled position, a triangle's sits a third of its half-height below its box's
centre, and a blank frame has no object."""
import copy

import numpy as np

from models.train import domain, probe_shift


def _one_object_clip(shape: str, seed: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    labels = domain.sample_clip(rng, frames=4, size=64, two_prob=0.0)
    labels["objects"][0]["shape"] = shape
    return labels


def test_a_circle_weighs_at_its_labelled_position_and_a_triangle_below_its_box_centre():
    for shape, drop in (("circle", 0.0), ("square", 0.0), ("diamond", 0.0), ("triangle", 0.35)):
        labels = _one_object_clip(shape)
        obj = labels["objects"][0]
        mass = probe_shift.object_mass(domain.render_clip(labels).astype(np.float32), labels, obj)
        want = np.asarray(obj["path"]) + [0.0, drop * obj["radius"]]
        assert np.abs(mass - want).max() < 0.15, (shape, mass - want)


def test_the_move_a_shape_edit_needs_is_about_a_third_of_the_radius_for_a_triangle():
    labels = _one_object_clip("circle")
    target = copy.deepcopy(labels)
    target["objects"][0]["shape"] = "triangle"
    src = probe_shift.object_mass(domain.render_clip(labels).astype(np.float32), labels, labels["objects"][0])
    tgt = probe_shift.object_mass(domain.render_clip(target).astype(np.float32), target, target["objects"][0])
    need = (tgt - src).mean(0)
    assert abs(need[0]) < 0.1 and abs(need[1] - 0.35 * labels["objects"][0]["radius"]) < 0.15, need


def test_a_frame_without_the_object_has_no_mass_to_measure_but_does_not_fail():
    labels = _one_object_clip("circle")
    blank = copy.deepcopy(labels)
    blank["objects"] = []
    frames = domain.render_clip(blank).astype(np.float32)
    mass = probe_shift.object_mass(frames, labels, labels["objects"][0])
    assert np.isfinite(mass).all()
