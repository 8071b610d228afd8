""" CAM engine cost: each method's time divided by one plain no-grad forward of the same batch.

pytorch-grad-cam's own ``GradCAM`` call is measured in the same run on the same work (model, layer,
targets), as is its time divided by the same forward. Run: ``python benchmarks/cam.py`` (``--quick`` for
a smaller grid). Prints a markdown table; ``--json PATH`` also saves the numbers.
"""
import argparse
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, save_json, time_interleaved  # noqa: E402

from timm_camaug import class_activation_maps  # noqa: E402
from timm_camaug.cam import resolve_target_layer  # noqa: E402

METHODS = ('cam', 'gradcam', 'gradcam++', 'xgradcam', 'layercam', 'hirescam', 'eigencam')
FULL = [('resnet50', 224, 16), ('resnet50', 224, 64), ('resnet50', 448, 16),
        ('vit_small_patch16_224', 224, 16), ('vit_small_patch16_224', 224, 64), ('vit_small_patch16_224', 448, 16)]
QUICK = [('resnet50', 224, 16), ('vit_small_patch16_224', 224, 16)]


def pgc_gradcam(model, layer, x, target):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    reshape = None
    if layer.layout == 'tokens':
        h, w = x.shape[-2] // 16, x.shape[-1] // 16
        npt = layer.num_prefix_tokens

        def reshape(t):
            return t[:, npt:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
    module = layer.module if layer.module is not None else model.layer4
    targets = [ClassifierOutputTarget(int(t)) for t in target]

    def run():
        with GradCAM(model=model, target_layers=[module], reshape_transform=reshape) as cam:
            cam(input_tensor=x, targets=targets)
        model.train()    # BaseCAM switches the model to eval and leaves it there
    return run


def bench(name, size, batch, repeats, device):
    torch.manual_seed(0)
    kw = {'img_size': size} if 'vit' in name else {}
    model = timm.create_model(name, num_classes=200, **kw).to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, 200, (batch,), device=device)
    layer = resolve_target_layer(model)

    def forward():
        model.eval()
        with torch.no_grad():
            model(x)
        model.train()
    fns = {'forward': forward}
    for m in METHODS:
        if m == 'cam' and layer.layout == 'tokens':
            continue
        fns[m] = (lambda m=m: class_activation_maps(model, x, target, method=m))
    fns['pytorch-grad-cam GradCAM'] = pgc_gradcam(model, layer, x, target)
    t = time_interleaved(fns, repeats, device)
    base = t['forward']
    return {k: {'seconds': v, 'ratio': v / base} for k, v in t.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='one batch size per model')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--json', default=None, help='also save the numbers to this JSON file')
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    results = {}
    rows = []
    for name, size, batch in (QUICK if args.quick else FULL):
        r = bench(name, size, batch, args.repeats, device)
        results[f'{name}@{size}x{batch}'] = r
        pgc = r['pytorch-grad-cam GradCAM']['ratio']
        ours = r['gradcam']['ratio']
        rows.append([name, size, batch, f"{r['forward']['seconds']:.3f}"]
                    + [r[m]['ratio'] if m in r else '-' for m in METHODS] + [pgc, pgc / ours])
        print(f'done {name} {size}px batch {batch}', file=sys.stderr, flush=True)
    header = ['model', 'px', 'batch', 'forward s'] + list(METHODS) + ['pytorch-grad-cam GradCAM', 'speed-up vs it']
    print(f'Machine: {machine()}\n')
    print('Time of each call divided by one plain no-grad forward of the same batch (median of '
          f'{args.repeats} interleaved repeats); "speed-up" = pytorch-grad-cam GradCAM / our gradcam.\n')
    print(markdown_table(header, rows))
    if args.json:
        save_json(args.json, {'machine': machine(), 'results': results})


if __name__ == '__main__':
    main()
