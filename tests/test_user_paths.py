"""What a user gets back (issue 18): their own data (.npz) on every command, target and API, and
samples without labels packed for the C program's predict; passes re-run with one option keep the
graph's other settings; --torch compiles reproducible by a seed; Graph.remove_synapse and a clear
error for edits made through g.nx; plots that say what they show and what they skip; the
reference's warning on LIF models. Every test builds its crafted input itself."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
from conftest import EXAMPLES, conv_feedback, two_feedback

import spidec
from spidec import SpidecError
from spidec.data import SPDS_MAGIC, SPDS_VERSION, Dataset, digits, load, pack, read_spds, write_spds

HAVE_CC = shutil.which("cc") is not None and shutil.which("make") is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="builds the C program (needs cc and make)")


def png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 3000


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """A user's .npz: 240 + 60 digits with the labels folded onto 5 classes (0..4), and the same
    test samples without labels."""
    d = tmp_path_factory.mktemp("own")
    ds = digits()
    path = d / "mine.npz"
    np.savez(path, x_train=ds.x_train[:240], y_train=ds.y_train[:240] % 5, x_test=ds.x_test[:60],
             y_test=ds.y_test[:60] % 5)
    np.savez(d / "new.npz", x=ds.x_test[:60])
    np.savez(d / "new_labelled.npz", x=ds.x_test[:60], y=ds.y_test[:60] % 5)
    return d


@pytest.fixture(scope="module")
def c_build(tmp_path_factory):
    if not HAVE_CC:
        pytest.skip("builds the C program (needs cc and make)")
    out = tmp_path_factory.mktemp("c") / "c"
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="c", out=out, T=8, T_back=10)
    art.build(sanitize=True)
    return art


# ---------------------------------------------------------------------------------------------- own data

def test_npz_errors_are_one_clear_line(tmp_path):
    x = np.zeros((4, 64), np.float32)
    np.savez(tmp_path / "half.npz", x_test=x, y_test=np.arange(4))
    with pytest.raises(SpidecError) as e:
        load(str(tmp_path / "half.npz"))
    msg = str(e.value)  # was: lacks the array 'x_train is not a file in the archive'
    assert "lacks x_train, y_train" in msg and "holds x_test, y_test" in msg and "not a file" not in msg
    np.savez(tmp_path / "unlabelled.npz", x=x)
    with pytest.raises(SpidecError, match=r"without a training/test split \(x\).*spidec dataset pack"):
        load(str(tmp_path / "unlabelled.npz"))
    np.save(tmp_path / "one.npy", x)
    (tmp_path / "one.npz").write_bytes((tmp_path / "one.npy").read_bytes())
    with pytest.raises(SpidecError, match=r"a single array \(\.npy\), not an \.npz"):
        load(str(tmp_path / "one.npz"))
    for bad, match in (({"y_test": np.arange(3)}, r"y_test of shape \[3\] for 4 samples"),
                       ({"y_train": np.array([0, 1, -2, 3])}, "holds the label -2"),
                       ({"y_test": np.array([0, 1, 2.5, 3])}, "y_test must be integers"),
                       ({"x_test": np.zeros((0, 64)), "y_test": np.zeros(0, int)}, "the test set is empty"),
                       ({"x_train": np.full((4, 64), np.nan)}, "x_train hold NaN")):
        np.savez(tmp_path / "bad.npz", **{"x_train": x, "y_train": np.arange(4), "x_test": x, "y_test": np.arange(4),
                                         **bad})
        with pytest.raises(SpidecError, match=match) as e:
            load(str(tmp_path / "bad.npz"))
        assert "\n" not in str(e.value)
    np.savez(tmp_path / "floats.npz", x_train=x, y_train=np.array([0.0, 1, 2, 3]), x_test=x, y_test=np.zeros(4))
    ds = load(str(tmp_path / "floats.npz"))  # whole numbers in floats (np.zeros) are labels, as the sim program reads
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == [0, 1, 2, 3] and ds.classes == 4
    with pytest.raises(SpidecError, match="has test samples of 64 values; the model's input shape"):
        Dataset("d", x[:, :63], np.arange(4), x, np.arange(4), 4).reshaped((63,))  # was a raw numpy ValueError


def test_pack_writes_samples_without_labels_for_predict(own_data, tmp_path):
    (path,) = pack(str(own_data / "new.npz"), tmp_path)
    assert path.name == "new.spds"
    x, y, classes = read_spds(path)
    assert y is None and classes == 0 and np.array_equal(x, digits().x_test[:60].astype(np.float32))
    raw = path.read_bytes()
    assert struct.unpack("<I", raw[4:8])[0] == 2 and len(raw) == 4 + 12 + 4 + 12 + 60 * 64 * 4 + 4  # no labels
    (labelled,) = pack(str(own_data / "new_labelled.npz"), tmp_path)
    _, y2, classes2 = read_spds(labelled)
    assert classes2 == 5 and y2.tolist() == (digits().y_test[:60] % 5).tolist()
    assert struct.unpack("<I", labelled.read_bytes()[4:8])[0] == SPDS_VERSION  # labelled files: version 1 as ever
    # a version-1 file may not drop its labels: classes 0 there is refused, as before
    head = SPDS_MAGIC + struct.pack("<IIIIQI", SPDS_VERSION, 1, 1, 64, 2, 0) + np.zeros(128, "<f4").tobytes()
    for body, match in ((head, "do not fit"), (head + np.zeros(2, "<i4").tobytes(), "0 classes is outside")):
        (tmp_path / "v1.spds").write_bytes(body + struct.pack("<I", zlib.crc32(body)))
        with pytest.raises(SpidecError, match=match):
            read_spds(tmp_path / "v1.spds")
    with pytest.raises(SpidecError, match="no classes"):
        write_spds(tmp_path / "x.spds", x, None, 3)


def test_dataset_pack_cli_of_samples_without_labels(run_cli, own_data, tmp_path):
    code, out, err = run_cli("dataset", "pack", str(own_data / "new.npz"), "-o", str(tmp_path), "--json")
    assert code == 0, err
    assert json.loads(out) == [str(tmp_path / "new.spds")]
    np.savez(tmp_path / "odd.npz", x=np.zeros((2, 3)), z=np.zeros(2))
    code, _, err = run_cli("dataset", "pack", str(tmp_path / "odd.npz"), "-o", str(tmp_path))
    assert code == 1 and "holds x, z; expected" in err and err.count("\n") == 1


@needs_cc
def test_the_c_program_predicts_samples_without_labels_under_sanitizers(c_build, own_data, tmp_path):
    """predict reads the unlabelled file and gives the same classes as for the labelled file of the
    same samples; train and eval refuse it in one line. Under ASan/UBSan."""
    (new,) = pack(str(own_data / "new.npz"), tmp_path)
    (labelled,) = pack(str(own_data / "new_labelled.npz"), tmp_path)
    exe = c_build.out / "train-san"
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}

    def run(*args):
        done = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
        assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr, done.stderr[-3000:]
        assert "LeakSanitizer" not in done.stderr, done.stderr[-3000:]
        return done

    got = run("predict", "--data", new)
    assert got.returncode == 0, got.stderr
    classes = [int(v) for v in got.stdout.split()]
    assert len(classes) == 60 and all(0 <= c < 10 for c in classes)
    assert run("predict", "--data", labelled).stdout.split() == got.stdout.split()
    for args in (("eval", "--test", new), ("train", "--train", new, "--epochs", "1"),
                 ("train", "--train", labelled, "--test", new, "--epochs", "1")):
        done = run(*args)
        assert done.returncode == 1 and "holds samples without labels" in done.stderr, (args, done.stderr)
        assert done.stderr.count("\n") == 1
    # crafted: a version-2 file whose size counts labels it does not announce
    raw = bytearray(new.read_bytes()[:-4]) + bytearray(np.zeros(60, "<i4").tobytes())
    crafted = tmp_path / "crafted.spds"
    crafted.write_bytes(bytes(raw) + struct.pack("<I", zlib.crc32(bytes(raw))))
    done = run("predict", "--data", crafted)
    assert done.returncode == 1 and "do not fit" in done.stderr
    with pytest.raises(SpidecError, match="do not fit"):
        read_spds(crafted)


@needs_cc
def test_run_trains_a_c_build_on_an_npz(run_cli, c_build, own_data):
    code, out, err = run_cli("run", str(c_build.out), "--data", str(own_data / "mine.npz"), "--epochs", "1",
                             "--batch", "16", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["target"] == "c" and len(summary["epochs"]) == 1 and 0 <= summary["test_accuracy"] <= 1
    x, _, classes = read_spds(c_build.out / "data" / "mine.test.spds")
    assert len(x) == 60 and classes == 5


def test_sim_program_reads_npz_through_spidec_data(own_data, tmp_path, capsys):
    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="sim", out=tmp_path / "sim", T=6,
                         T_back=8)
    np.savez(tmp_path / "half.npz", x_train=np.zeros((4, 64)), y_train=np.arange(4))
    assert art.run_cli("--data", str(tmp_path / "half.npz"), "--epochs", "1", "--quiet") == 1
    err = capsys.readouterr().err
    assert "lacks x_test, y_test" in err and "not a file" not in err
    assert art.run_cli("--data", str(own_data / "mine.npz"), "--epochs", "1", "--quiet", "--limit-train", "32") == 0


def test_reference_takes_an_npz(run_cli, own_data):
    code, out, err = run_cli("reference", str(EXAMPLES / "digits_fb.spir"), "--data", str(own_data / "mine.npz"),
                             "--batch", "4", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["inputs"].startswith("4 ") and "mine.npz test samples" in report["inputs"]
    assert 0 <= report["readouts"]["logits"]["accuracy"] <= 1 and "warnings" not in report


@needs_cc
def test_demo_and_report_on_an_npz(run_cli, own_data, tmp_path, monkeypatch):
    out = tmp_path / "demo"
    code, text, err = run_cli("demo", "--data", str(own_data / "mine.npz"), "--epochs", "1", "--out", str(out),
                              "--json")
    assert code == 0, err
    summary = json.loads(text)
    assert summary["model"] == "mine_fb" and 0 <= summary["test_accuracy"] <= 1
    g = spidec.load(out / "model.spir")
    assert g.readouts[0].shape == (5,)  # the built-in model's readout: the data's 5 classes
    run = json.loads((out / "run.json").read_text())
    assert run["data"] == str((own_data / "mine.npz").resolve())
    for name in ("graph.png", "curves.png", "rates.png", "raster.png"):
        assert png(out / name), name
    (out / "raster.png").unlink()
    monkeypatch.chdir(tmp_path)  # the run's data by its absolute path, from anywhere
    code, text, err = run_cli("report", str(out))
    assert code == 0, err
    assert png(out / "raster.png") and "note" not in err


def test_lava_trains_on_an_npz(run_cli, own_data, tmp_path):
    pytest.importorskip("lava", reason="Lava is an optional extra")
    out = tmp_path / "lava"
    spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="lava", out=out, T=6, T_back=8)
    code, text, err = run_cli("train", str(out), "--data", str(own_data / "mine.npz"), "--epochs", "1",
                              "--limit-train", "4", "--limit-test", "4", "--batch", "2", "--json")
    assert code == 0, err
    assert len(json.loads(text)["epochs"]) == 1
    code, _, err = run_cli("train", str(out), "--data", str(own_data / "new.npz"), "--epochs", "1")
    assert code == 1 and "without a training/test split" in err
    x = np.zeros((4, 64))  # labels past the readout's 10 classes, samples of another size: one line, not IndexError
    for name, arrays, says in (("many", {"y_train": np.array([0, 1, 2, 11])}, "labels up to 11; the model's readout"),
                               ("wide", {"x_train": np.zeros((4, 65)), "x_test": np.zeros((4, 65))}, "65 values")):
        parts = {"x_train": x, "y_train": np.arange(4), "x_test": x, "y_test": np.arange(4), **arrays}
        np.savez(tmp_path / f"{name}.npz", **parts)
        code, _, err = run_cli("train", str(out), "--data", str(tmp_path / f"{name}.npz"), "--epochs", "1")
        assert code == 1 and says in err and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------------------- passes

def test_rerunning_the_passes_keeps_the_graphs_settings(run_cli, tmp_path):
    g = spidec.load(EXAMPLES / "digits_fb.spir")
    trained = spidec.passes.run(g, T=12, T_back=20, sf=50.0, lr=0.05, momentum=0.8, vth_back=0.25,
                                milestones=(3, 5), feedback_norm_mode="project")
    again = spidec.passes.run(trained, T=40)
    t = again.training
    assert again.simulation.T == 40 and t.T_back == 20 and t.sf == 50.0
    assert (t.optimizer.lr, t.optimizer.momentum, t.optimizer.milestones) == (0.05, 0.8, (3, 5))
    assert t.optimizer.feedback_norm_mode == "project" and {c.vth for c in t.couples} == {0.25}
    assert spidec.passes.run(trained, lr=0.2).training.optimizer.lr == 0.2  # what is given still wins
    assert spidec.passes.run(g, T=40).training.T_back == 100  # a fresh graph: the defaults
    spidec.save(trained, tmp_path / "trained.spir")
    code, out, err = run_cli("compile", str(tmp_path / "trained.spir"), "--T", "40", "-o", str(tmp_path / "b"))
    assert code == 0, err
    assert "T=40 T_back=20 sf=50 lr=0.05 momentum=0.8" in out
    assert spidec.load(tmp_path / "b" / "model.spir").training.sf == 50.0


# ---------------------------------------------------------------------------------------------- torch seed

def test_torch_compiles_are_seeded(run_cli, tmp_path):
    torch = pytest.importorskip("torch")
    state = torch.get_rng_state()
    outs = []
    for k, extra in enumerate(((), (), ("--seed", "1"))):
        out = tmp_path / f"b{k}"
        code, _, err = run_cli("compile", "--torch", f"{EXAMPLES / 'models.py'}:DigitsFB", "-o", str(out), "--quiet",
                               *extra)
        assert code == 0, err
        with np.load(out / "weights.npz") as z:
            outs.append({k: z[k] for k in z.files})
    assert outs[0].keys() == outs[2].keys()
    assert all(np.array_equal(outs[0][k], outs[1][k]) for k in outs[0])
    assert not all(np.array_equal(outs[0][k], outs[2][k]) for k in outs[0])
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone
    code, _, err = run_cli("compile", str(EXAMPLES / "digits_fb.spir"), "--seed", "3", "-o", str(tmp_path / "x"))
    assert code == 1 and "--seed applies to --torch models only" in err


# ---------------------------------------------------------------------------------------------- graph edits

def test_remove_synapse_and_node_keep_the_graph_consistent():
    g = two_feedback()
    syn = g.remove_synapse("b_b")
    assert syn.delay == 1 and "b_b" not in g and "b_b" not in [e.name for e in g.synapses()]
    g.validate()
    assert sorted(g.remove_node("x2")) == ["x2_c"]
    assert "x2" not in g and [i.name for i in g.inputs] == ["x"]
    from spidec.text import dumps, loads

    assert loads(*dumps(g)) == g.validate()  # prints and parses as a graph built that way
    with pytest.raises(SpidecError, match="no synapse named 'b_b'"):
        g.remove_synapse("b_b")
    g.remove_synapse("x_a")
    g.remove_synapse("c_a")
    with pytest.raises(SpidecError, match="population 'a' has no incoming synapse"):
        g.validate()
    trained = spidec.passes.run(two_feedback(), T=4, T_back=4)
    with pytest.raises(SpidecError, match="went through the passes"):
        trained.remove_synapse("b_b")
    assert "b_b" in trained


@pytest.mark.parametrize("edit", ["remove_edge", "remove_node", "add_edge", "add_node"])
def test_edits_through_nx_end_in_one_error(edit):
    g = two_feedback()
    {"remove_edge": lambda: g.nx.remove_edge("c", "a"), "remove_node": lambda: g.nx.remove_node("y"),
     "add_edge": lambda: g.nx.add_edge("a", "c", key="extra"), "add_node": lambda: g.nx.add_node("q")}[edit]()
    with pytest.raises(SpidecError, match=r"edited through g\.nx inconsistently") as e:
        g.validate()
    assert "\n" not in str(e.value)
    with pytest.raises(SpidecError):
        g.synapses() if edit.startswith("remove") else g.validate()


# ---------------------------------------------------------------------------------------------- plots

@pytest.fixture
def figures(monkeypatch):
    """The figures the report functions draw, kept open instead of closed."""
    pytest.importorskip("matplotlib")
    from spidec.report import _plt

    plt = _plt()
    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for f in kept:
        close(f)


def test_one_epoch_gives_integer_epoch_ticks(figures, tmp_path):
    from spidec.report import plot_curves, plot_rates

    h = [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.1, "train_accuracy": 0.5, "test_accuracy": 0.4,
          "forward_rate": {"z": 0.2}, "backward_rate": {"z_couple": 0.1}}]
    plot_curves(h, tmp_path / "c.png")
    plot_rates(h, tmp_path / "r.png")
    for fig in figures:
        fig.canvas.draw()
        for ax in fig.axes:
            assert list(ax.get_xticks()) == [1.0]
    three = [{**h[0], "epoch": e} for e in (1, 2, 3)]
    plot_curves(three, tmp_path / "c3.png")
    figures[-1].canvas.draw()
    assert [list(ax.get_xticks()) for ax in figures[-1].axes] == [[1.0, 2.0, 3.0]] * 2
    assert png(tmp_path / "c.png") and png(tmp_path / "r.png")


def test_graph_drawing_gives_delayed_edges_heads_and_their_own_arcs(figures, tmp_path):
    from matplotlib.patches import ArrowStyle

    from spidec.report import plot_graph

    g = spidec.passes.run(two_feedback(), T=4, T_back=4)
    plot_graph(g, tmp_path / "graph.png")
    assert png(tmp_path / "graph.png")
    (ax,) = figures[0].axes
    arrows = {a.get_gid(): a for a in ax.texts if a.get_gid()}
    delayed = {f"synapse:{e.name}" for e in g.synapses() if e.synapse.delay} | \
              {f"backward:{b.name}" for b in g.training.backward if b.delay}
    assert delayed == {"synapse:c_a", "synapse:b_b", "backward:c_a_T", "backward:b_b_T"}
    assert len(arrows) == len(g.synapses()) + len(g.training.backward) + len(g.training.injections)
    seen = set()
    for gid, a in arrows.items():
        patch = a.arrow_patch
        assert isinstance(patch.get_arrowstyle(), ArrowStyle.CurveFilledB), gid  # a filled head on every edge
        rad = patch.get_connectionstyle().rad
        if gid in delayed:
            assert patch.get_linestyle() == "--" and rad != 0, gid
        key = (tuple(np.round(a.xy, 3)), tuple(np.round(a.xyann, 3)), rad)
        assert key not in seen, gid  # no two arrows on the same path
        seen.add(key)
    # the delayed backward a_couple -> c_couple skips b_couple: it bows below the couples' row
    a_c = arrows["backward:c_a_T"]
    assert a_c.xy[0] > a_c.xyann[0] and a_c.arrow_patch.get_connectionstyle().rad > 0  # rightward, rad > 0: below


def test_the_raster_says_which_neurons_it_shows(figures, tmp_path):
    from spidec.report import plot_raster, raster_neurons

    rng = np.random.default_rng(0)
    fw = {"h": (rng.random((10, 300)) < 0.3).astype(np.float32)}
    bw = {"h_couple": rng.integers(-1, 2, (12, 300)).astype(np.float32)}
    plot_raster(fw, bw, tmp_path / "raster.png")
    (a_fw, a_bw) = figures[0].axes
    assert "neurons 0, 4, 8, ..., 296: one in 4, 75 of 300" in a_fw.get_title()
    ys = a_fw.collections[0].get_offsets()[:, 1]
    assert set(np.unique(ys)) <= set(range(0, 300, 4)) and ys.max() > 280  # each at its own index
    assert len(ys) == np.count_nonzero(fw["h"][:, ::4])
    assert raster_neurons(50)[1] == "all 50 neurons"
    assert "the same neurons" in a_bw.get_title()


def test_report_says_what_it_skips(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    from spidec.report import report_dir

    art = spidec.compile(spidec.load(EXAMPLES / "digits_fb.spir"), target="sim", out=tmp_path / "sim", T=6, T_back=8)
    notes: list[str] = []
    paths = report_dir(art.out, note=notes.append)
    assert [p.name for p in paths] == ["graph.png"]
    assert any("curves.png and rates.png skipped" in n for n in notes)
    assert any("raster.png skipped" in n and "no trained weights" in n for n in notes)
    assert art.run_cli("--data", "digits", "--epochs", "1", "--quiet", "--limit-train", "40", "--limit-test",
                       "20") == 0
    notes.clear()
    paths = report_dir(art.out, note=notes.append)
    assert {p.name for p in paths} == {"graph.png", "curves.png", "rates.png"}
    assert notes == ["raster.png skipped: it needs a sample and the run does not record its data set: give --data "
                     "NAME (digits, mnist, FILE.npz ...)"]
    with pytest.warns(spidec.SpidecWarning, match="raster.png skipped"):  # the API's default: a warning
        report_dir(art.out)


@needs_cc
def test_report_on_a_c_build(run_cli, c_build, own_data, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(c_build.out, out, ignore=shutil.ignore_patterns("data", "*.png", "checkpoint.bin"))
    code, _, err = run_cli("report", str(out), "--data", str(own_data / "mine.npz"))
    assert code == 0, err  # was: model.spir refers to tensors but no tensors are given
    assert png(out / "graph.png") and png(out / "raster.png")
    assert "note: curves.png and rates.png skipped: a c build keeps no history.json" in err
    assert "compiled initial weights (no checkpoint.bin" in err
    code, _, err = run_cli("train", str(out), "--data", str(own_data / "mine.npz"), "--epochs", "1", "--checkpoint",
                           str(out / "checkpoint.bin"), "--quiet")
    assert code == 0, err
    (out / "raster.png").unlink()
    code, text, err = run_cli("report", str(out))  # the data spidec train packed, the trained weights
    assert code == 0, err
    assert png(out / "raster.png") and "wrote" in text
    assert "mine.test.spds" in err and "initial weights" not in err


# ---------------------------------------------------------------------------------------------- reference

def test_reference_warns_that_it_models_lif_by_if_rates(run_cli, tmp_path):
    spidec.save(conv_feedback(), tmp_path / "lif.spir")  # c2 is LIF (leak 0.9), c1 IF
    code, out, err = run_cli("reference", str(tmp_path / "lif.spir"), "--batch", "2", "--json")
    assert code == 0, err
    assert "spidec: warning: LIF population c2 (leak 0.9): the reference solves the IF rate equation" in err
    assert "leak-weighted average rate" in err and err.count("\n") == 1
    assert json.loads(out)["warnings"][0].startswith("LIF population c2")
    code, out, err = run_cli("reference", str(EXAMPLES / "digits_fb.spir"), "--batch", "2")
    assert code == 0 and "warning" not in err
