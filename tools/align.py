"""Stage 1, alignment (LLaVA's pre-training stage): train only the modality projectors on captions, LLM and
encoders frozen, no LoRA, and write them with a record of the encoders / LLM they were aligned for.

    loss = CE(LLM(cue, P_m(E_m(x)), "describe the <modality>."), caption)      only P_m (the projectors) learn

The continual-learning scripts start from the result with `--projectors PATH` (`--projectors aligned`: the
embedded default's, shipped in data/tiny_base/aligned.safetensors); a file aligned for other encoders or another
LLM is refused in one line.

    python tools/align.py --out my.safetensors --llm Qwen/Qwen2.5-0.5B-Instruct --image-encoder openai/clip-vit-base-patch16 \
        --data-root ~/captions --tasks image-cap,audio-cap          # any captioning tasks (data/README.md)
    python tools/align.py --tiny-base --out data/tiny_base/aligned.safetensors   # the embedded default's (data/base.py)

For the embedded default the captions are drawn on their own seed (ALIGN_SEED, data/base.py) from every world of
the synthetic benchmark: shapes, tones, moving shapes and the five dcl domain scenes (captioned with their object,
count and place). No benchmark item and no QA target is among them.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import (batches, build_model, ce_loss, check_finite, parse_args, projector_record,  # noqa: E402
                    seed_everything, shared_parser)
from data import base  # noqa: E402
from data import generate as G  # noqa: E402
from data.files import UserError, atomic_write  # noqa: E402


def alignment_corpus(root, seed, per_world):
    """Caption samples of every synthetic world under root/align/{train,test}.jsonl (media beside them); the domain
    scenes are captioned "<count> <object> <place>". Returns root."""
    d = os.path.join(root, "align")
    if os.path.exists(os.path.join(d, "DONE")):
        return root
    os.makedirs(os.path.join(d, "media"), exist_ok=True)
    rng, rows = np.random.default_rng(seed), []
    worlds = [(m, None) for m in ("image", "audio", "video")] + [("image", dom) for dom in G.DOMAIN_ORDER]
    for modality, domain in worlds:
        for _ in range(per_world):
            if domain is None:
                media, instr, target, _ = G.make_example(modality, "cap", rng)
            else:
                a = dict(G.sample_domain_attrs(domain, rng), domain=domain)
                media, instr = G.DOMAIN_RENDER[domain](a, rng), G.caption_instruction("image")
                target = f"{G.NUMBERS[a['count']]} {a['object']} {a['place']}"
            rel = f"media/{len(rows):05d}.{G.EXT[modality]}"
            G.write_media(os.path.join(d, rel), modality, media)
            rows.append({"id": f"align/{len(rows)}", "modality": modality, "media": rel, "instruction": instr,
                         "target": target})
    for split in ("train", "test"):          # the scripts read both; alignment trains on train only
        atomic_write(os.path.join(d, f"{split}.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    open(os.path.join(d, "DONE"), "w").close()
    return root


def align(model, samples, args):
    """Train model.projectors alone (every other weight frozen) for args.max_steps steps of CE on the captions."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for p in model.projectors.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    for batch in batches(samples, args, 0, desc="align projectors", opt=opt):
        b = model.collate(batch).to(model.device)
        loss = ce_loss(model(b), b.labels)
        check_finite(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


def save(path, model, record):
    """Projectors as safetensors, the record (what they were aligned for) in its metadata."""
    from safetensors.torch import save_file
    state = {f"{m}.{k}": v.detach().cpu().contiguous() for m, p in model.projectors.items() for k, v in p.state_dict().items()}
    tmp = f"{path}.{os.getpid()}.tmp"
    save_file(state, tmp, metadata={"record": json.dumps(record, sort_keys=True)})
    os.replace(tmp, path)


def main(argv=None):
    p = shared_parser("align", __doc__)
    g = p.add_argument_group("align")
    g.add_argument("--out", required=True, help="where to write the projectors (.safetensors)")
    g.add_argument("--tiny-base", action="store_true", help="the embedded default's: data/base.py's recipe")
    p.set_defaults(**{k: v for k, v in base.ALIGN.items() if k in ("lr", "batch_size", "max_steps")}, epochs=10**6)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(p, argv + (["--tasks", "align"] if "--tasks" not in argv else []))
    if args.projectors != "scratch":
        raise UserError("--projectors: alignment starts from scratch projectors")
    if args.tiny_base:
        if args.data_root or (args.llm, args.image_encoder, args.audio_encoder) != ("tiny",) * 3:
            raise UserError("--tiny-base aligns the embedded default on its own corpus: give no model flags or --data-root")
        # the recipe its key names, whatever else the command line says
        args.seed, args.lr, args.batch_size, args.max_steps = (base.ALIGN[k] for k in ("seed", "lr", "batch_size",
                                                                                        "max_steps"))
        n = base.ALIGN["per_world"]
        args.data_root = alignment_corpus(os.path.join(base.CACHE, "align", f"seed{args.seed}-n{n}"), args.seed, n)
    seed_everything(args.seed)
    model, tasks, _ = build_model(args)
    samples = [s for t in tasks for s in t.train if s.answers is None]
    if not samples:
        raise UserError(f"--tasks {args.tasks}: no captioning samples to align on")
    loss = align(model, samples, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    record = projector_record(args)
    if args.tiny_base:
        record["key"] = base.align_key()
    save(args.out, model, record)
    print(f"aligned projectors ({', '.join(model.projectors)}; last loss {loss:.3f}) written to {args.out}")


if __name__ == "__main__":
    main()
