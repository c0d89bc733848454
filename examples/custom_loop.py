"""Your own training loop around fctc's pure train step, on the bundled corpus.

    python examples/custom_loop.py --steps 300        # a few minutes on a laptop CPU

No framework owns the loop: the model is a pair of pure functions, the optimiser an optax-style
chain, ``step(state, batch)`` returns the next state, and a checkpoint is that state.
"""

import argparse

import fctc
from fctc import checkpoint, data, optim
from fctc.train import make_eval_step, make_train_step

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--limit", type=int, default=None, help="use the first N utterances only")
parser.add_argument("--out", default="custom_loop.safetensors")
args = parser.parse_args()

manifests = data.bundled_manifests()
train = data.read_manifest(manifests["train"])[: args.limit]
vocab = fctc.text.Vocabulary(list(fctc.corpus.CHARACTERS))
model = fctc.models.quartznet_ctc(vocab, "tiny", front_end={"nfilt": 32})
schedule = optim.warmup_cosine_decay_schedule(0.0, 3e-3, max(1, args.steps // 10), args.steps)
tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(schedule))
step = make_train_step(model, tx, blank=vocab.blank_idx)
state = step.init_state(fctc.random.key(0))

dataset = data.SpeechDataset(train, vocab, max_labels=data.output_frames_fn(160, 2))
epoch = 0
while int(state.step) < args.steps:
    plan = data.bucket_batches(dataset.durations, max_batch_seconds=16.0, seed=0, epoch=epoch)
    for batch in data.make_loader(dataset, plan):
        state, metrics = step(state, batch)
        if int(state.step) % 20 == 0 or int(state.step) == args.steps:
            print(f"step {int(state.step)}: loss {float(metrics['loss']):.3f}")
        if int(state.step) == args.steps:
            break
    epoch += 1
checkpoint.save_train_state(args.out, state, {"vocabulary": vocab.to_dict()})

valid = data.SpeechDataset(data.read_manifest(manifests["validation"])[: args.limit], vocab)
evaluate = make_eval_step(model, vocab)
plan = data.bucket_batches(valid.durations, max_batch_seconds=32.0, shuffle=False)
counts = sum((evaluate(state.params, state.model_state, b).counts for b in data.make_loader(valid, plan)),
             fctc.metrics.ErrorCounts())
print(f"validation CER {100 * counts.cer:.1f}%, WER {100 * counts.wer:.1f}%; saved {args.out}")
