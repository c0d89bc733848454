"""Loading NeMo .nemo archives: configs, key mapping, vocabularies and errors.

The tests build their own archives: a NeMo-style ``model_config.yaml`` and a
``model_weights.ckpt`` whose keys follow NeMo's ``JasperBlock`` layout, generated here from the
block list independently of the loader's renaming rules.
"""

import io
import tarfile

import pytest
import torch
import yaml

import fctc
from fctc import tree
from fctc.adapter import FunctionalModule
from fctc.models import citrinet_ctc, quartznet_ctc
from fctc.nemo import (
    COMPATIBILITY,
    detect_architecture,
    fix_vocab,
    front_end_config,
    load_nemo,
    map_weights,
    nemo_key_to_fctc,
    nemo_vocabulary,
    parse_model,
    read_nemo_archive,
)

LABELS = [" ", "a", "b", "c", "'"]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _block(filters, kernel, repeat=1, stride=1, dilation=1, residual=True, separable=True, **kw):
    return dict(
        filters=filters, repeat=repeat, kernel=[kernel], stride=[stride], dilation=[dilation],
        dropout=0.0, residual=residual, separable=separable, **kw,
    )


def quartznet_jasper():
    return [
        _block(16, 7, stride=2, residual=False),
        _block(16, 5, repeat=2),
        _block(24, 7, repeat=2),
        _block(24, 5, dilation=2, residual=False),
        _block(32, 1, residual=False, separable=False),
    ]


def citrinet_jasper():
    se = dict(se=True, se_context_size=-1, kernel_size_factor=1.0)
    return [
        _block(16, 3, residual=False, **se),
        _block(16, 5, repeat=2, stride=2, stride_last=True, residual_mode="stride_add", **se),
        _block(24, 7, repeat=2, **se),
        _block(32, 5, residual=False, **se),
    ]


def _pairs(jasper):
    """(NeMo key, thunder key) for every encoder tensor, from NeMo's JasperBlock layout:
    ``mconv`` = per sub-block conv(s) then batch norm, ReLU + dropout between sub-blocks, the
    squeeze-excite last; ``res.0`` = 1x1 conv and batch norm. Thunder wraps each non-conv
    layer in ``Masked`` (``.layer.0``) and drops ``res``'s inner list."""
    out = []
    for b, cfg in enumerate(jasper):
        nemo, ours = f"encoder.encoder.{b}", f"encoder.{b}"
        idx = 0
        for r in range(cfg["repeat"]):
            for _ in range(2 if cfg["separable"] else 1):
                out.append((f"{nemo}.mconv.{idx}.conv.weight", f"{ours}.mconv.{idx}.conv.weight"))
                idx += 1
            out += [(f"{nemo}.mconv.{idx}.{t}", f"{ours}.mconv.{idx}.layer.0.{t}") for t in BN]
            idx += 1
            if r < cfg["repeat"] - 1:
                idx += 2  # ReLU, Dropout
        if cfg.get("se"):
            out += [
                (f"{nemo}.mconv.{idx}.fc.{j}.weight", f"{ours}.mconv.{idx}.layer.0.fc.{j}.weight")
                for j in (0, 2)
            ]
        if cfg["residual"]:
            out.append((f"{nemo}.res.0.0.conv.weight", f"{ours}.res.0.conv.weight"))
            out += [(f"{nemo}.res.0.1.{t}", f"{ours}.res.1.layer.0.{t}") for t in BN]
    out += [("decoder.decoder_layers.0.weight", "decoder.weight"),
            ("decoder.decoder_layers.0.bias", "decoder.bias")]
    return out


def _preprocessor(features):
    return {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.02,
        "window_stride": 0.01, "window": "hann", "features": features, "n_fft": 512,
        "frame_splicing": 1, "dither": 1e-05,
    }


def quartznet_config(old_format=False):
    pre, enc = _preprocessor(16), {"feat_in": 16, "activation": "relu", "conv_mask": True,
                                   "jasper": quartznet_jasper()}
    dec = {"feat_in": 32, "num_classes": len(LABELS), "vocabulary": "${labels}"}
    if old_format:  # NeMo < 1.0: sections nest their arguments under "params"
        return {"labels": LABELS, "preprocessor": {"cls": "x", "params": pre},
                "encoder": {"cls": "x", "params": enc}, "decoder": {"params": dec}}
    return {"sample_rate": 16000, "labels": LABELS, "preprocessor": pre,
            "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", **enc},
            "decoder": dec}


SUBWORDS = ["<unk>", "the", "##ing", "a", "##s"]


def citrinet_config():
    pre = {**_preprocessor("${model.model_defaults.n_mels}"), "window_size": 0.025}
    return {
        "model_defaults": {"n_mels": 16, "enc_final": 32},
        "tokenizer": {"dir": "tok", "type": "bpe"},
        "preprocessor": pre,
        "encoder": {"feat_in": 16, "activation": "relu", "conv_mask": True,
                    "jasper": citrinet_jasper()},
        "decoder": {"feat_in": "${model.model_defaults.enc_final}", "num_classes": 5,
                    "vocabulary": SUBWORDS},
    }


def _weights(model, pairs, seed=0):
    """A NeMo state_dict: random tensors with the shapes of ``model``'s tensors."""
    params, state = model.init(fctc.random.key(seed))
    shapes = {k: v for k, v in (tree.flatten_dict(params) | tree.flatten_dict(state)).items()}
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for nemo_key, our_key in pairs:
        ref = shapes[our_key]
        if nemo_key.endswith("running_var"):
            weights[nemo_key] = torch.rand(ref.shape, generator=gen) + 0.5
        elif ref.is_floating_point():
            weights[nemo_key] = torch.randn(ref.shape, generator=gen)
        else:
            weights[nemo_key] = torch.tensor(11)
    weights["preprocessor.featurizer.window"] = torch.ones(320)
    return weights


def _write(path, config, weights, prefix="./", gz=True, extra=None):
    files = {"model_config.yaml": yaml.safe_dump(config).encode()}
    buf = io.BytesIO()
    torch.save(weights, buf)
    files["model_weights.ckpt"] = buf.getvalue()
    files.update(extra or {})
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _reference_quartznet():
    return quartznet_ctc(len(LABELS) + 1, "tiny", front_end={"nfilt": 16})


def _reference_citrinet():
    return citrinet_ctc(len(SUBWORDS) + 1, "tiny", front_end={"nfilt": 16})


@pytest.fixture(scope="module")
def quartznet_archive(tmp_path_factory):
    weights = _weights(_reference_quartznet(), _pairs(quartznet_jasper()))
    path = _write(tmp_path_factory.mktemp("qn") / "qn.nemo", quartznet_config(), weights)
    return path, weights


def _check_loaded(ckpt, weights, pairs):
    flat = tree.flatten_dict(ckpt.params) | tree.flatten_dict(ckpt.state)
    for nemo_key, our_key in pairs:
        assert torch.equal(flat[our_key], weights[nemo_key]), our_key
    enc_dec = [k for k in flat if k.startswith(("encoder.", "decoder."))]
    assert sorted(enc_dec) == sorted(k for _, k in pairs)


def test_quartznet_archive_loads_every_tensor(quartznet_archive):
    path, weights = quartznet_archive
    ckpt = load_nemo(path)
    assert ckpt.architecture == "quartznet"
    _check_loaded(ckpt, weights, _pairs(quartznet_jasper()))
    assert ckpt.vocabulary.itos == LABELS + ["<blank>"]
    assert ckpt.vocabulary.blank_idx == len(LABELS)
    assert ckpt.front_end == dict(
        sample_rate=16000, n_window_size=320, n_window_stride=160, n_fft=512, nfilt=16,
        dither=1e-5, pad_mode="reflect",
    )
    assert ckpt.encoder["filters"] == [16, 24] and ckpt.encoder["kernel_sizes"] == [5, 7]
    assert ckpt.encoder["final_filters"] == (24, 32) and ckpt.encoder["repeat"] == 2
    # the loaded model runs on raw audio and equals the same-size model built by hand
    audio, lengths = torch.randn(2, 3200) * 0.1, torch.tensor([3200, 2000])
    (logits, out_lengths), _ = ckpt.model.apply(ckpt.params, ckpt.state, audio, lengths)
    assert logits.shape == (2, len(LABELS) + 1, int(out_lengths.max()))
    (want, _), _ = _reference_quartznet().apply(ckpt.params, ckpt.state, audio, lengths)
    assert torch.equal(logits, want)
    # and drops into the nn.Module adapter with thunder's keys
    module = FunctionalModule(ckpt.model, ckpt.params, ckpt.state).eval()
    assert "encoder.0.mconv.2.layer.0.running_mean" in module.state_dict()
    torch.testing.assert_close(module(audio, lengths)[0], logits)


def test_old_format_plain_tar_without_prefix(tmp_path):
    weights = _weights(_reference_quartznet(), _pairs(quartznet_jasper()), seed=3)
    path = _write(tmp_path / "old.nemo", quartznet_config(old_format=True), weights,
                  prefix="", gz=False)
    ckpt = load_nemo(path)
    _check_loaded(ckpt, weights, _pairs(quartznet_jasper()))
    assert ckpt.vocabulary.itos[:-1] == LABELS


def test_citrinet_archive_with_interpolations_and_subword_vocabulary(tmp_path):
    weights = _weights(_reference_citrinet(), _pairs(citrinet_jasper()), seed=1)
    path = _write(tmp_path / "cit.nemo", citrinet_config(), weights,
                  extra={"3f2a_tokenizer.model": b"not a real sentencepiece model"})
    ckpt = load_nemo(path, dropout=0.1)
    assert ckpt.architecture == "citrinet"
    _check_loaded(ckpt, weights, _pairs(citrinet_jasper()))
    assert ckpt.encoder["strides"] == [2, 1] and ckpt.encoder["dropout"] == 0.1
    assert ckpt.front_end["n_window_size"] == 400 and ckpt.front_end["nfilt"] == 16
    assert ckpt.vocabulary.itos == ["\u2581<unk>", "\u2581the", "ing", "\u2581a", "s", "<blank>"]
    assert ckpt.tokenizer_model == b"not a real sentencepiece model"
    # decoding joins pieces; encoding needs the sentencepiece model
    pred = torch.tensor([[1, 1, 2, 5, 3, 4]])
    assert [t.strip() for t in ckpt.vocabulary.decode_prediction(pred)] == ["theing as"]
    with pytest.raises(ValueError, match="tokenizer_dir"):
        ckpt.vocabulary.encode("the")
    audio, lengths = torch.randn(1, 2400) * 0.1, torch.tensor([2400])
    (logits, _), _ = ckpt.model.apply(ckpt.params, ckpt.state, audio, lengths)
    assert logits.shape[1] == len(SUBWORDS) + 1


def test_key_mapping_and_vocab_fix_follow_thunder():
    assert nemo_key_to_fctc("encoder.encoder.0.mconv.0.conv.weight") == (
        "encoder.0.mconv.0.conv.weight"
    )
    assert nemo_key_to_fctc("encoder.encoder.12.mconv.2.running_var") == (
        "encoder.12.mconv.2.layer.0.running_var"
    )
    assert nemo_key_to_fctc("encoder.encoder.1.res.0.0.conv.weight") == (
        "encoder.1.res.0.conv.weight"
    )
    assert nemo_key_to_fctc("encoder.encoder.10.res.0.1.bias") == "encoder.10.res.1.layer.0.bias"
    assert nemo_key_to_fctc("encoder.encoder.3.mconv.14.fc.2.weight") == (
        "encoder.3.mconv.14.layer.0.fc.2.weight"
    )
    assert nemo_key_to_fctc("decoder.decoder_layers.0.weight") == "decoder.weight"
    assert nemo_key_to_fctc("preprocessor.featurizer.fb") is None
    with pytest.raises(KeyError):
        nemo_key_to_fctc("joint.pred.weight")
    assert fix_vocab(["##ing", "the", "<unk>"]) == ["ing", "\u2581the", "\u2581<unk>"]


def test_front_end_config_reads_nemo_preprocessor_fields():
    cfg = front_end_config({**_preprocessor(80), "window_size": 0.025, "n_fft": None,
                            "preemph": 0.9})
    assert cfg == dict(sample_rate=16000, n_window_size=400, n_window_stride=160, n_fft=512,
                       nfilt=80, dither=1e-5, pad_mode="reflect", preemph=0.9)
    with pytest.raises(ValueError, match="window='hamming'"):
        front_end_config({**_preprocessor(80), "window": "hamming"})


def test_archive_errors(tmp_path, quartznet_archive):
    path, weights = quartznet_archive
    with pytest.raises(FileNotFoundError):
        load_nemo(tmp_path / "nope.nemo")
    data = path.read_bytes()
    (tmp_path / "cut.nemo").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_nemo(tmp_path / "cut.nemo")
    (tmp_path / "junk.nemo").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="not a readable .nemo archive"):
        load_nemo(tmp_path / "junk.nemo")
    only_config = tmp_path / "config_only.nemo"
    with tarfile.open(only_config, "w") as tar:
        data = yaml.safe_dump(quartznet_config()).encode()
        info = tarfile.TarInfo("./model_config.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"lacks \['model_weights.ckpt'\]"):
        read_nemo_archive(only_config)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_are_never_unpickled_as_code(tmp_path, capsys):
    buf = io.BytesIO()
    torch.save({"encoder.encoder.0.mconv.0.conv.weight": _Payload()}, buf)
    path = tmp_path / "evil.nemo"
    with tarfile.open(path, "w") as tar:
        for name, data in (("model_config.yaml", yaml.safe_dump(quartznet_config()).encode()),
                           ("model_weights.ckpt", buf.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="weights_only=True"):
        load_nemo(path)
    assert "must never run" not in capsys.readouterr().out


def test_subword_vocabulary_encodes_with_the_archived_sentencepiece_model(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    model_file = io.BytesIO()
    text = ["the cat sat on the mat", "a bat and a cat", "that hat is flat"] * 20
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model_file, vocab_size=24,
        model_type="bpe", minloglevel=2,
    )
    proc = spm.SentencePieceProcessor(model_proto=model_file.getvalue())
    pieces = [proc.id_to_piece(i) for i in range(proc.get_piece_size())]
    # NeMo's spelling of the pieces in decoder.vocabulary
    labels = [p[1:] if p.startswith("\u2581") else "##" + p for p in pieces]
    cfg = citrinet_config()
    cfg["decoder"]["vocabulary"] = labels
    weights = _weights(citrinet_ctc(len(labels) + 1, "tiny", front_end={"nfilt": 16}),
                       _pairs(citrinet_jasper()))
    path = _write(tmp_path / "spm.nemo", cfg, weights,
                  extra={"tokenizer.model": model_file.getvalue()})
    ckpt = load_nemo(path, tokenizer_dir=tmp_path / "tok")
    assert ckpt.vocabulary.itos == pieces + ["<blank>"]
    encoded = ckpt.vocabulary.encode("the cat")
    assert encoded.tolist() == proc.encode("the cat")


def test_unknown_architectures_and_mismatched_keys(tmp_path, quartznet_archive):
    _, weights = quartznet_archive
    jasper_only = {**quartznet_config(), "encoder": {"jasper": [_block(8, 3, separable=False)] * 3}}
    with pytest.raises(ValueError, match="unknown architecture"):
        load_nemo(_write(tmp_path / "jasper.nemo", jasper_only, weights))
    conformer = {**quartznet_config(), "encoder": {"_target_": "ConformerEncoder", "n_layers": 2}}
    with pytest.raises(ValueError, match="no encoder.jasper"):
        load_nemo(_write(tmp_path / "conformer.nemo", conformer, weights))
    with pytest.raises(ValueError, match="unknown architecture 'jasper'"):
        load_nemo(_write(tmp_path / "q.nemo", quartznet_config(), weights), architecture="jasper")

    bad = dict(weights)
    del bad["encoder.encoder.1.mconv.0.conv.weight"]
    bad["encoder.encoder.9.mconv.0.conv.weight"] = torch.zeros(1)
    bad["joint.pred.weight"] = torch.zeros(1)
    bad["encoder.encoder.0.mconv.2.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        load_nemo(_write(tmp_path / "bad.nemo", quartznet_config(), bad))
    msg = str(err.value)
    assert "missing (1): ['encoder.1.mconv.0.conv.weight']" in msg
    assert "joint.pred.weight" in msg
    assert "encoder.encoder.9.mconv.0.conv.weight (as encoder.9.mconv.0.conv.weight)" in msg
    assert "encoder.encoder.0.mconv.2.weight (as encoder.0.mconv.2.layer.0.weight): " \
           "checkpoint (3,), model (16,)" in msg

    more_labels = {**quartznet_config(), "labels": LABELS + ["z"]}
    with pytest.raises(ValueError, match="decoder has 6 outputs but the vocabulary has 7"):
        load_nemo(_write(tmp_path / "labels.nemo", more_labels, weights))


def test_missing_batch_counters_start_at_zero(tmp_path, quartznet_archive):
    _, weights = quartznet_archive
    old = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    ckpt = load_nemo(_write(tmp_path / "old_bn.nemo", quartznet_config(), old))
    counters = [v for k, v in tree.flatten_dict(ckpt.state).items() if "num_batches" in k]
    assert counters and all(int(c) == 0 for c in counters)


def test_unsupported_block_settings_are_named(tmp_path, quartznet_archive):
    _, weights = quartznet_archive
    cfg = quartznet_config()
    cfg["encoder"]["jasper"][1]["dilation"] = [2]
    with pytest.raises(ValueError, match=r"jasper\[1\] has dilation=2"):
        load_nemo(_write(tmp_path / "dil.nemo", cfg, weights))
    cfg = quartznet_config()
    del cfg["encoder"]["jasper"][2]["filters"]
    with pytest.raises(ValueError, match="lacks the entry 'filters'"):
        load_nemo(_write(tmp_path / "filters.nemo", cfg, weights))
    cfg = citrinet_config()
    cfg["encoder"]["jasper"][1]["stride_last"] = False
    with pytest.raises(ValueError, match="stride_last"):
        load_nemo(_write(tmp_path / "stride.nemo", cfg, {}))
    cfg = citrinet_config()
    cfg["decoder"]["feat_in"] = "${model.nowhere}"
    cfg["labels"] = "${decoder.vocabulary}"
    cfg["preprocessor"]["features"] = "${model.nowhere}"
    with pytest.raises(ValueError, match="names an entry that does not exist"):
        load_nemo(_write(tmp_path / "interp.nemo", cfg, {}))


# -- the three steps of load_nemo, one at a time --------------------------------------------


def test_parse_model_reads_each_architecture_through_its_compatibility_piece():
    assert sorted(COMPATIBILITY) == ["citrinet", "quartznet"]
    assert detect_architecture(quartznet_jasper()) == "quartznet"
    assert detect_architecture(citrinet_jasper()) == "citrinet"
    with pytest.raises(ValueError, match="match neither"):
        detect_architecture([_block(8, 3, separable=False)] * 3)
    spec = parse_model(quartznet_config(), dropout=0.2)
    assert spec.architecture is COMPATIBILITY["quartznet"]
    assert spec.front_end["nfilt"] == 16 and spec.encoder["dropout"] == 0.2
    assert spec.encoder["final_filters"] == (24, 32) and spec.encoder["stem_kernel"] == 7
    old = parse_model(quartznet_config(old_format=True))
    assert old.encoder == parse_model(quartznet_config()).encoder
    cit = parse_model(citrinet_config(), architecture="citrinet")
    assert cit.encoder["strides"] == [2, 1] and cit.encoder["final_filters"] == 32
    # the builder the architecture names holds exactly what the config describes
    arch = cit.architecture.architecture
    assert arch.decoder_width(cit.encoder) == 32 and arch.output_stride(cit.encoder) == 2
    with pytest.raises(ValueError, match="encoder.feat_in=16 differs"):
        parse_model({**quartznet_config(), "preprocessor": _preprocessor(8)})


def test_nemo_vocabulary_of_characters_and_subwords(tmp_path):
    assert nemo_vocabulary(quartznet_config(), None).itos == LABELS + ["<blank>"]
    sub = nemo_vocabulary(citrinet_config(), b"bytes")
    assert sub.itos[:3] == ["\u2581<unk>", "\u2581the", "ing"]
    with pytest.raises(ValueError, match="tokenizer_dir"):
        sub.encode("the")
    with pytest.raises(ValueError, match="no vocabulary"):
        nemo_vocabulary({**quartznet_config(), "labels": []}, None)
    with pytest.raises(ValueError, match="no 'decoder' section"):
        nemo_vocabulary({"labels": LABELS}, None)


def test_map_weights_fills_the_model_or_lists_what_does_not_fit(quartznet_archive):
    _, weights = quartznet_archive
    model = _reference_quartznet()
    params, state = model.init(fctc.random.key(9))
    p, s = map_weights(weights, params, state, source="x.nemo", architecture="quartznet",
                       num_classes=len(LABELS) + 1)
    flat = tree.flatten_dict(p) | tree.flatten_dict(s)
    for nemo_key, our_key in _pairs(quartznet_jasper()):
        assert torch.equal(flat[our_key], weights[nemo_key])
    assert torch.equal(p["encoder"]["0"]["mconv"]["0"]["conv"]["weight"],
                       weights["encoder.encoder.0.mconv.0.conv.weight"])
    assert torch.equal(params["encoder"]["0"]["mconv"]["0"]["conv"]["weight"],
                       model.init(fctc.random.key(9))[0]["encoder"]["0"]["mconv"]["0"]["conv"]["weight"])
    short = {k: v for k, v in weights.items() if k != "decoder.decoder_layers.0.bias"}
    with pytest.raises(ValueError, match=r"'x.nemo' do not match the quartznet.*\n.*missing \(1\)"):
        map_weights(short, params, state, source="x.nemo", architecture="quartznet",
                    num_classes=len(LABELS) + 1)


def test_compatibility_block_checks():
    from fctc.nemo.compatibility import block_kernels, check_block, check_block_count, first_int

    assert first_int([11], "k") == 11 and first_int(3, "k") == 3
    with pytest.raises(ValueError, match=r"jasper\[0\].kernel must be an int"):
        first_int([3, 5], "encoder.jasper[0].kernel")
    assert block_kernels(quartznet_jasper()[1:3], 1) == [5, 7]
    check_block(_block(8, 3, stride=2), 0, "QuartzNet", stride=2, separable=True)
    with pytest.raises(ValueError, match=r"jasper\[4\] has residual=False.*needs residual=True"):
        check_block(_block(8, 3, residual=False), 4, "QuartzNet", residual=True)
    with pytest.raises(ValueError, match="a QuartzNet config has x; encoder.jasper has only 2 blocks"):
        check_block_count([{}, {}], 3, "QuartzNet", "x")
    with pytest.raises(ValueError, match="has only 2 blocks"):
        parse_model({**quartznet_config(), "encoder": {"jasper": quartznet_jasper()[:2]}},
                    architecture="quartznet")
