import librosa
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fctc
import fctc.testing
from fctc import audio as A
from fctc.audio import (
    augment_features,
    feature_lengths,
    filterbank,
    mel_filterbank,
    normalise,
    random_warp,
    spec_augment,
)

# -- an imperative reference of thunder's FilterbankFeatures (eval mode) ----------------------
# Written for these tests from thunder-speech's documented behaviour: a sequence of modules over
# (audio, lengths) -- (dither + preemphasis), power spectrum (buffer "window"), mel scale inside a
# wrapper whose ``.layer`` is an nn.Sequential (buffer "fb"), and the masked normaliser, which
# zero-fills the padding, then sums over every frame while dividing by the valid count.


class _Preemph(nn.Module):
    def forward(self, x):
        return torch.cat((x[:, :1], x[:, 1:] - 0.97 * x[:, :-1]), dim=1)


class _Wrap(nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.layer = nn.Sequential(*layers)

    def forward(self, x, lengths):
        return self.layer(x), lengths


class _Power(nn.Module):
    def __init__(self, win, hop, n_fft):
        super().__init__()
        self.win, self.hop, self.n_fft = win, hop, n_fft
        self.register_buffer("window", torch.hann_window(win, periodic=False))

    def forward(self, x, lengths):
        s = torch.stft(x, self.n_fft, self.hop, self.win, self.window, center=True,
                       return_complex=True)
        s = torch.view_as_real(s)
        return torch.sqrt(s.pow(2).sum(-1)).pow(2.0), (torch.floor(lengths / self.hop) + 1).long()


class _Mel(nn.Module):
    def __init__(self, sr, n_fft, nfilt):
        super().__init__()
        fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=nfilt, norm="slaney")
        self.register_buffer("fb", torch.from_numpy(fb).unsqueeze(0))

    def forward(self, x):
        return torch.log(torch.matmul(self.fb.to(x.dtype), x) + 2**-24)


def thunder_normalize(x, mask, div_guard):
    """thunder-speech 3.2.0's masked ``normalize_tensor``, step by step: the padding is set to 0
    first, the mean divides the sum by the valid count, and the squared deviations are summed
    over every position (a padded one adds ``(0 - mean)**2``) before that same division."""
    x = torch.masked_fill(x, ~mask.type(torch.bool), 0.0)
    count = mask.sum(dim=-1, keepdim=True).detach()
    mean = x.sum(dim=-1, keepdim=True).detach() / count
    squares = (x - mean).pow(2).sum(dim=-1, keepdim=True).detach()
    std = (squares / count).sqrt()
    return torch.masked_fill((x - mean) / (std + div_guard), ~mask.type(torch.bool), 0.0)


class _ThunderNorm(nn.Module):
    def forward(self, x, lengths):
        mask = (torch.arange(x.shape[-1])[None, :] < lengths[:, None]).unsqueeze(1)
        return thunder_normalize(x, mask, 1e-5), lengths


class _Seq(nn.Sequential):
    def forward(self, x, lengths):  # type: ignore[override]
        for m in self:
            x, lengths = m(x, lengths)
        return x, lengths


def thunder_reference(sr=16000, win=320, hop=160, n_fft=512, nfilt=64):
    return _Seq(_Wrap(_Preemph()), _Power(win, hop, n_fft), _Wrap(_Mel(sr, n_fft, nfilt)),
                _ThunderNorm()).eval()


def valid_stats_reference(x, lengths):
    """Per example and feature: (x - mean) / (pop. std + 1e-5) over the valid frames; 0 after."""
    out = torch.zeros_like(x)
    for b, n in enumerate(lengths.tolist()):
        v = x[b, :, :n]
        mean = v.mean(dim=-1, keepdim=True)
        std = v.std(dim=-1, unbiased=False, keepdim=True)
        out[b, :, :n] = (v - mean) / (std + 1e-5)
    return out


def waves(b=3, n=8000, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, generator=g, dtype=dtype) * 0.1


# -- mel filterbank ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,f_min,f_max",
    [(16000, 512, 64, 0.0, None), (8000, 256, 40, 0.0, None), (22050, 1024, 80, 30.0, 8000.0),
     (16000, 400, 128, 0.0, None), (44100, 2048, 20, 100.0, 20000.0)],
)
def test_mel_filterbank_matches_librosa(sr, n_fft, n_mels, f_min, f_max):
    ours = mel_filterbank(sr, n_fft, n_mels, f_min, f_max)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max,
                              norm="slaney")
    assert ours.dtype == torch.float32 and tuple(ours.shape) == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-9)


def test_mel_filterbank_matches_torchaudio():
    torchaudio = pytest.importorskip("torchaudio")
    ref = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 64, 16000, norm="slaney",
                                                mel_scale="slaney")
    torch.testing.assert_close(mel_filterbank(16000, 512, 64), ref.T, rtol=1e-5, atol=1e-7)


def test_mel_scale_conversions_match_librosa():
    hz = np.array([0.0, 50.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0, 22050.0])
    np.testing.assert_allclose(A.hz_to_mel(torch.from_numpy(hz)).numpy(), librosa.hz_to_mel(hz),
                               rtol=1e-12)
    mels = librosa.hz_to_mel(hz)
    np.testing.assert_allclose(A.mel_to_hz(torch.from_numpy(mels)).numpy(), hz, rtol=1e-12,
                               atol=1e-9)


def test_mel_filterbank_rejects_bad_arguments():
    with pytest.raises(ValueError, match="f_min < f_max"):
        mel_filterbank(16000, 512, 64, f_min=9000.0)
    with pytest.raises(ValueError, match="positive"):
        mel_filterbank(16000, 0, 64)


# -- the front end -----------------------------------------------------------------------------


def test_state_keys_and_buffers_are_thunders():
    params, state = filterbank().init(fctc.random.key(0))
    ref = thunder_reference()
    assert params == {}
    flat = fctc.tree.flatten_dict(state)
    assert set(flat) == set(ref.state_dict()) == {"1.window", "2.layer.0.fb"}
    for k, v in ref.state_dict().items():
        assert flat[k].shape == v.shape and flat[k].dtype == v.dtype
        torch.testing.assert_close(flat[k], v, rtol=1e-6, atol=1e-9)


def test_unpadded_batch_matches_thunder_reference_exactly():
    ref = thunder_reference()
    model = filterbank()
    # Load the reference's buffers as a checkpoint would.
    state = fctc.tree.unflatten_dict(dict(ref.state_dict()))
    x = waves(2, 9600)
    lengths = torch.tensor([9600, 9600])
    (ours, ours_len), _ = model.apply({}, state, x, lengths)
    theirs, their_len = ref(x, lengths)
    assert torch.equal(ours_len, their_len) and ours.shape == (2, 64, 61)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_padded_batch_thunder_stats_match_thunder_reference():
    ref = thunder_reference()
    state = fctc.tree.unflatten_dict(dict(ref.state_dict()))
    x = waves(3, 8000)
    lengths = torch.tensor([8000, 5000, 3321])
    x[torch.arange(8000) >= lengths[:, None]] = 0.0
    (ours, ours_len), _ = filterbank(stats="thunder").apply({}, state, x, lengths)
    theirs, their_len = ref(x, lengths)
    assert torch.equal(ours_len, their_len)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # The default statistics cover the valid frames only, so padded rows differ from thunder.
    (valid, _), _ = filterbank().apply({}, state, x, lengths)
    torch.testing.assert_close(valid[0], theirs[0], rtol=0, atol=1e-5)
    assert not torch.allclose(valid[2], theirs[2], atol=1e-2)


def test_matches_independent_reference_on_padded_batch():
    x = waves(3, 8000, seed=1, dtype=torch.float64)
    lengths = torch.tensor([8000, 6100, 2000])
    x[torch.arange(8000) >= lengths[:, None]] = 0.0
    model = filterbank(n_window_size=400, n_window_stride=128, n_fft=512, nfilt=40,
                       sample_rate=8000)
    params, state = model.init()
    (ours, ours_len), _ = model.apply(params, state, x, lengths)
    # reference: numpy preemphasis + torch.stft + librosa mel + valid-frame statistics
    xn = x.numpy()
    pre = torch.from_numpy(np.concatenate([xn[:, :1], xn[:, 1:] - 0.97 * xn[:, :-1]], axis=1))
    spec = torch.stft(pre, 512, 128, 400, torch.hann_window(400, periodic=False,
                      dtype=torch.float64), center=True, return_complex=True)
    fb = torch.from_numpy(librosa.filters.mel(sr=8000, n_fft=512, n_mels=40, norm="slaney",
                                              dtype=np.float64))
    logmel = torch.log(fb @ spec.abs().pow(2) + 2**-24)
    ref_len = lengths // 128 + 1
    assert torch.equal(ours_len, ref_len)
    torch.testing.assert_close(ours, valid_stats_reference(logmel, ref_len), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hop", [1, 7, 160])
def test_feature_lengths_formula(hop):
    lengths = torch.tensor([0, 1, hop - 1, hop, hop + 1, 10 * hop + 3])
    expected = torch.tensor([n // hop + 1 for n in lengths.tolist()])
    assert torch.equal(feature_lengths(lengths, hop), expected)
    assert torch.equal(feature_lengths(lengths.float(), hop), expected)
    assert feature_lengths(lengths, hop).dtype == torch.int64


def test_full_length_gives_every_stft_frame():
    model = filterbank(n_window_size=64, n_window_stride=32, n_fft=128, nfilt=16)
    for n in (1000, 1024, 1057):
        (f, fl), _ = model.apply({}, model.init()[1], waves(1, n), torch.tensor([n]))
        assert f.shape[-1] == n // 32 + 1 == int(fl[0])


def test_dither_is_train_only_and_deterministic_by_key():
    model = filterbank()
    params, state = model.init()
    x, lengths = waves(2, 4000), torch.tensor([4000, 3000])
    k1, k2 = fctc.random.key(1), fctc.random.key(2)
    (ev, _), _ = model.apply(params, state, x, lengths)
    (ev_k, _), _ = model.apply(params, state, x, lengths, train=False, key=k1)
    assert torch.equal(ev, ev_k)
    (t1, _), _ = model.apply(params, state, x, lengths, train=True, key=k1)
    (t1b, _), _ = model.apply(params, state, x, lengths, train=True, key=k1)
    (t2, _), _ = model.apply(params, state, x, lengths, train=True, key=k2)
    assert torch.equal(t1, t1b) and not torch.equal(t1, t2) and not torch.equal(t1, ev)
    with pytest.raises(ValueError, match="needs a key"):
        model.apply(params, state, x, lengths, train=True)
    nodither = filterbank(dither=0.0)
    (t0, _), _ = nodither.apply(params, state, x, lengths, train=True)
    assert torch.equal(t0, ev)


def test_dither_step_adds_scaled_normal_noise():
    noise = A.dither(fctc.random.key(3), torch.zeros(4, 20000), 1e-3)
    assert abs(noise.std().item() - 1e-3) < 2e-5 and abs(noise.mean().item()) < 2e-5
    assert torch.equal(noise, A.dither(fctc.random.key(3), torch.zeros(4, 20000), 1e-3))


def test_preemphasis_and_log_steps():
    x = torch.tensor([[1.0, 2.0, 4.0]])
    torch.testing.assert_close(A.preemphasis(x, 0.5), torch.tensor([[1.0, 1.5, 3.0]]))
    assert torch.isfinite(A.log(torch.zeros(3))).all()
    torch.testing.assert_close(A.log(torch.tensor([1.0])), torch.tensor([2.0**-24]).log1p())


def test_padding_invariance():
    """An utterance followed by >= n_fft // 2 zeros gets the same features in any batch."""
    model = filterbank()
    params, state = model.init()
    utt = waves(1, 5000, seed=4)[0]
    other = waves(2, 9000, seed=5)
    a = torch.zeros(2, 5000 + 256)
    a[0, :5000], a[1] = utt, other[0, : 5000 + 256]
    b = torch.zeros(3, 9000)
    b[1, :5000], b[0], b[2] = utt, other[0], other[1]
    (fa, la), _ = model.apply(params, state, a, torch.tensor([5000, 5256]))
    (fb, lb), _ = model.apply(params, state, b, torch.tensor([9000, 5000, 9000]))
    n = int(la[0])
    assert n == int(lb[1]) == 5000 // 160 + 1
    torch.testing.assert_close(fa[0, :, :n], fb[1, :, :n], rtol=1e-5, atol=1e-5)
    assert (fa[0, :, n:] == 0).all() and (fb[1, :, n:] == 0).all()


def test_frames_clear_of_the_length_never_see_the_padding():
    """Before normalisation, frames with t*hop + win/2 <= length ignore the padded samples."""
    x = waves(1, 6000, seed=6)
    y = x.clone()
    y[:, 4000:] = torch.randn(1, 2000) * 10  # garbage beyond a length of 4000

    def logmel(a):
        fb = mel_filterbank(16000, 512, 64)
        return A.log(A.mel_scale(A.power_spectrum(A.preemphasis(a, 0.97), 512, 160, 320), fb))

    clear = (4000 - 160) // 160 + 1  # frames t with t*160 + 160 <= 4000
    assert torch.equal(logmel(x)[..., :clear], logmel(y)[..., :clear])
    assert not torch.equal(logmel(x)[..., clear], logmel(y)[..., clear])


@given(
    st.one_of(fctc.testing.padded_batches(dtype=torch.float32, scale=4.0),
              fctc.testing.padded_batches(dtype=torch.float64, padding="nan")),
    st.sampled_from([1e-5, 1e-7, 0.5]),
)
def test_thunder_stats_equal_thunders_formula_bit_for_bit_on_padded_input(batch, div_guard):
    """Padding holds garbage (as log-mel padding does): thunder zero-fills it, so it enters the
    variance as (0 - mean)^2 terms; normalise(stats="thunder") gives the identical bits."""
    x, lengths = batch
    mask = (torch.arange(x.shape[-1])[None, :] < lengths[:, None]).unsqueeze(1)
    want = thunder_normalize(x, mask, div_guard)
    got = normalise(x, lengths, div_guard, stats="thunder")
    assert got.dtype == x.dtype
    assert torch.equal(got, want)


def test_thunder_stats_depend_on_the_amount_of_padding_not_its_contents():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 10, generator=g) + 3.0  # a nonzero mean, as log-mel features have
    lengths = torch.tensor([6])
    longer = torch.cat([x, torch.randn(1, 4, 5, generator=g)], dim=-1)  # more padding
    garbage = x.clone()
    garbage[..., 6:] = 1e3
    thunder = normalise(x, lengths, stats="thunder")
    assert torch.equal(normalise(garbage, lengths, stats="thunder"), thunder)
    assert not torch.allclose(normalise(longer, lengths, stats="thunder")[..., :10], thunder, atol=1e-3)
    valid = normalise(x, lengths)
    torch.testing.assert_close(normalise(longer, lengths)[..., :10], valid)
    assert not torch.allclose(thunder, valid, atol=1e-2)
    # thunder's variance adds (0 - mean)^2 per padded frame: its std is larger than the valid one
    assert (thunder[..., :6].abs() < valid[..., :6].abs()).all()


def test_normalise_statistics():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 20, generator=g, dtype=torch.float64)
    lengths = torch.tensor([20, 11, 1])
    torch.testing.assert_close(normalise(x, lengths), valid_stats_reference(x, lengths))
    full = torch.tensor([20, 20, 20])
    torch.testing.assert_close(normalise(x, full, stats="thunder"), normalise(x, full))
    with pytest.raises(ValueError, match="stats"):
        normalise(x, lengths, stats="nemo")


def test_front_end_validation_errors():
    model = filterbank()
    params, state = model.init()
    with pytest.raises(ValueError, match="rank 2"):
        model.apply(params, state, torch.zeros(4000), torch.tensor([4000]))
    with pytest.raises(ValueError, match="beyond"):
        model.apply(params, state, torch.zeros(1, 4000), torch.tensor([4001]))
    with pytest.raises(ValueError, match="2.layer.0.fb"):
        model.apply(params, {"1": state["1"]}, torch.zeros(1, 4000), torch.tensor([4000]))
    with pytest.raises(ValueError, match="n_fft"):
        filterbank(n_fft=256, n_window_size=320)
    with pytest.raises(ValueError, match="positive"):
        filterbank(n_window_stride=0)


# -- SpecAugment -------------------------------------------------------------------------------


def runs(row):
    """Maximal runs of True in a 1-D bool tensor, as (start, stop) pairs."""
    out, start = [], None
    for i, v in enumerate(row.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i))
            start = None
    return out


augment_args = st.tuples(
    st.integers(0, 2**31), st.integers(1, 4), st.integers(1, 12), st.integers(1, 40),
    st.integers(0, 3), st.integers(0, 8), st.integers(0, 3),
    st.one_of(st.integers(0, 10), st.floats(0.0, 1.0)),
)


@given(augment_args, st.data())
def test_spec_augment_properties(args, data):
    seed, batch, n_feat, n_time, fm, fw, tm, tw = args
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, n_time), min_size=batch,
                                              max_size=batch)))
    valid = torch.arange(n_time)[None, :] < lengths[:, None]
    # 1 on valid frames, 5 on padding (so a change there would show)
    feats = torch.where(valid[:, None, :], 1.0, 5.0).expand(batch, n_feat, n_time).clone()
    key = fctc.random.key(seed)
    out = spec_augment(key, feats, lengths, fm, fw, tm, tw)
    assert torch.equal(out, spec_augment(key, feats, lengths, fm, fw, tm, tw))
    assert torch.equal(out.masked_select(~valid[:, None, :].expand_as(out)),
                       feats.masked_select(~valid[:, None, :].expand_as(feats)))
    assert set(out.unique().tolist()) <= {0.0, 1.0, 5.0}
    # time masks alone: at most tm spans, each at most W frames, inside [0, length)
    t_only = spec_augment(key, feats, lengths, 0, fw, tm, tw)
    for b, n in enumerate(lengths.tolist()):
        w = tw if isinstance(tw, int) else max(1, int(np.floor(n * tw)))
        w = min(w, n)
        masked = (t_only[b] == 0).all(dim=0) & valid[b]
        spans = runs(masked)
        assert int(masked.sum()) <= tm * w and len(spans) <= tm
        assert all(stop <= n for _, stop in spans)
    # frequency masks alone: at most fm bands of at most fw features, on valid frames only
    f_only = spec_augment(key, feats, lengths, fm, fw, 0, tw)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            assert torch.equal(f_only[b], feats[b])
            continue
        rows = (f_only[b, :, :n] == 0).all(dim=1)
        assert int(rows.sum()) <= fm * min(fw, n_feat) and len(runs(rows)) <= fm
        assert ((f_only[b, :, :n] == 0) == rows[:, None]).all()


def test_spec_augment_zero_masks_is_identity_and_keys_matter():
    feats = torch.randn(4, 64, 100)
    lengths = torch.tensor([100, 80, 50, 1])
    key = fctc.random.key(0)
    assert torch.equal(spec_augment(key, feats, lengths, 0, 27, 0, 0.05), feats)
    assert torch.equal(spec_augment(key, feats, lengths, 2, 0, 2, 0), feats)
    a = spec_augment(fctc.random.key(1), feats, lengths)
    b = spec_augment(fctc.random.key(2), feats, lengths)
    assert not torch.equal(a, b) and not torch.equal(a, feats)
    assert torch.equal(spec_augment(key, feats, lengths, mask_value=-1.0) == -1.0,
                       spec_augment(key, feats, lengths) == 0.0)


def test_spec_augment_validation():
    feats, lengths, key = torch.zeros(2, 8, 10), torch.tensor([10, 5]), fctc.random.key(0)
    with pytest.raises(ValueError, match="freq_masks"):
        spec_augment(key, feats, lengths, freq_masks=-1)
    with pytest.raises(ValueError, match="at most 1"):
        spec_augment(key, feats, lengths, time_width=1.5)
    with pytest.raises(ValueError, match="rank 3"):
        spec_augment(key, feats[0], lengths)


def test_empty_audio_is_a_clear_error_and_zero_lengths_are_fine():
    fb = filterbank()
    params, state = fb.init(fctc.random.key(0))
    with pytest.raises(ValueError, match="audio is empty"):
        fb.apply(params, state, torch.zeros(2, 0), torch.tensor([0, 0]))
    (feats, lengths), _ = fb.apply(params, state, torch.randn(2, 1600), torch.tensor([0, 1600]))
    assert torch.isfinite(feats).all() and lengths.tolist() == [1, 11]


def test_random_warp_stretches_time_and_warps_features():
    x, lengths = torch.randn(3, 8, 20), torch.tensor([20, 11, 1])
    x = fctc.testing.fill_padding(x, lengths, "zeros")
    same, same_lengths = random_warp(fctc.random.key(0), x, lengths)
    assert torch.equal(same_lengths, lengths)
    torch.testing.assert_close(same, x[:, :, : int(lengths.max())])
    y, y_lengths = fctc.testing.assert_pure(
        random_warp, fctc.random.key(1), x, lengths, time_stretch=0.2, freq_warp=0.1
    )
    ratio = y_lengths.float() / lengths.float()
    assert ((ratio > 0.75) & (ratio < 1.25)).all() and int(y_lengths[2]) == 1
    assert y.shape == (3, 8, int(y_lengths.max()))
    assert not y[~_valid(y_lengths, y.shape[-1])].any()
    # The first and last valid frames are kept (up to the feature warp), so a 1-frame
    # example stays itself in time.
    z, _ = random_warp(fctc.random.key(1), x, lengths, time_stretch=0.2)
    torch.testing.assert_close(z[:, :, 0], x[:, :, 0])
    both, both_lengths = augment_features(fctc.random.key(2), x, lengths, {"time_stretch": 0.2},
                                          {"time_masks": 1, "freq_masks": 1, "freq_width": 2})
    assert both.shape[-1] == int(both_lengths.max())
    assert torch.equal(augment_features(fctc.random.key(2), x, lengths, None, None)[0], x)


def _valid(lengths: torch.Tensor, size: int) -> torch.Tensor:
    mask = torch.arange(size)[None, :] < lengths[:, None]
    return mask[:, None, :].expand(-1, 8, -1)


def test_random_warp_validation():
    x, lengths = torch.zeros(2, 8, 10), torch.tensor([10, 5])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        random_warp(fctc.random.key(0), x, lengths, time_stretch=1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        random_warp(fctc.random.key(0), x, lengths, freq_warp=-0.1)
