""" The modes as the reference implementations compute them, for the speed comparison in ``modes.py``.

Written the way the authors' released code (or, for Attentive CutMix, the third-party code) is written:
per-sample Python loops, NumPy/OpenCV round trips, all-class CAMs, a backward pass into the parameters.
These are benchmark baselines only, not used by the package; numerics follow methods.md.
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F


def _rand_bbox(size, lam):
    h, w = size[2], size[3]
    cut_rat = np.sqrt(1. - lam)
    cut_h, cut_w = int(h * cut_rat), int(w * cut_rat)
    cx, cy = np.random.randint(h), np.random.randint(w)
    return (np.clip(cx - cut_h // 2, 0, h), np.clip(cy - cut_w // 2, 0, w),
            np.clip(cx + cut_h // 2, 0, h), np.clip(cy + cut_w // 2, 0, w))


class ReferenceSnapMix:
    """SnapMix as in Shaoli-Huang/SnapMix utils/mixmethod.py: a train-mode forward (BatchNorm statistics
    updated, hence a model copy here), all K class maps by conv2d, per-sample loops."""

    def __init__(self, model, beta=5.0):
        self.model = copy.deepcopy(model)
        self.beta = beta

    def get_spm(self, x, y):
        model = self.model.train()
        with torch.no_grad():
            fms = model.forward_features(x)
            clsw = model.get_classifier()
            weight = clsw.weight.data.view(clsw.weight.size(0), clsw.weight.size(1), 1, 1)
            fms = F.relu(fms)
            poolfea = F.adaptive_avg_pool2d(fms, (1, 1)).squeeze()
            clslogit = F.softmax(clsw.forward(poolfea), dim=-1)
            logitlist = [clslogit[i, y[i]] for i in range(x.size(0))]
            out = F.conv2d(fms, weight, bias=clsw.bias.data)
            outmaps = torch.stack([out[i, y[i]] for i in range(x.size(0))])
            outmaps = F.interpolate(outmaps[:, None], x.shape[-2:], mode='bilinear', align_corners=False)[:, 0]
            for i in range(x.size(0)):
                outmaps[i] -= outmaps[i].min()
                outmaps[i] /= outmaps[i].sum()
        return outmaps, torch.stack(logitlist)

    def __call__(self, x, y):
        x = x.clone()
        wfmaps, _ = self.get_spm(x, y)
        lam, lam1 = np.random.beta(self.beta, self.beta), np.random.beta(self.beta, self.beta)
        rand_index = torch.randperm(x.size(0))
        wfmaps_b = wfmaps[rand_index]
        target_b = y[rand_index]
        same_label = y == target_b
        bbx1, bby1, bbx2, bby2 = _rand_bbox(x.size(), lam)
        bbx1_1, bby1_1, bbx2_1, bby2_1 = _rand_bbox(x.size(), lam1)
        lam_a = torch.ones(x.size(0))
        lam_b = 1 - lam_a
        if (bby2 - bby1) * (bbx2 - bbx1) > 0 and (bby2_1 - bby1_1) * (bbx2_1 - bbx1_1) > 0:
            ncont = x[rand_index, :, bbx1_1:bbx2_1, bby1_1:bby2_1].clone()
            ncont = F.interpolate(ncont, size=(bbx2 - bbx1, bby2 - bby1), mode='bilinear', align_corners=True)
            x[:, :, bbx1:bbx2, bby1:bby2] = ncont
            lam_a = 1 - wfmaps[:, bbx1:bbx2, bby1:bby2].sum(2).sum(1) / (wfmaps.sum(2).sum(1) + 1e-8)
            lam_b = wfmaps_b[:, bbx1_1:bbx2_1, bby1_1:bby2_1].sum(2).sum(1) / (wfmaps_b.sum(2).sum(1) + 1e-8)
            tmp = lam_a.clone()
            lam_a[same_label] += lam_b[same_label]
            lam_b[same_label] += tmp[same_label]
        return x, y, target_b, lam_a, lam_b


class ReferenceSaliencyMix:
    """SaliencyMix as in afm-shahab-uddin/SaliencyMix: OpenCV saliency of one image (the normalised float
    tensor, as released), one box for the whole batch."""

    def __init__(self, beta=1.0):
        import cv2
        self.cv2 = cv2
        self.beta = beta

    def saliency_bbox(self, img, lam):
        size = img.size()
        w, h = size[1], size[2]
        cut_rat = np.sqrt(1. - lam)
        cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
        temp_img = img.cpu().numpy().transpose(1, 2, 0)
        saliency = self.cv2.saliency.StaticSaliencyFineGrained_create()
        (success, saliency_map) = saliency.computeSaliency(temp_img)
        saliency_map = (saliency_map * 255).astype('uint8')
        maximum_indices = np.unravel_index(np.argmax(saliency_map, axis=None), saliency_map.shape)
        x, y = maximum_indices[0], maximum_indices[1]
        return (np.clip(x - cut_w // 2, 0, w), np.clip(y - cut_h // 2, 0, h),
                np.clip(x + cut_w // 2, 0, w), np.clip(y + cut_h // 2, 0, h))

    def __call__(self, x, y):
        x = x.clone()
        lam = np.random.beta(self.beta, self.beta)
        rand_index = torch.randperm(x.size(0))
        bbx1, bby1, bbx2, bby2 = self.saliency_bbox(x[rand_index[0]], lam)
        x[:, :, bbx1:bbx2, bby1:bby2] = x[rand_index, :, bbx1:bbx2, bby1:bby2]
        lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (x.size()[-1] * x.size()[-2]))
        return x, y, y[rand_index], lam


class ReferenceSaliencyMixPerSample(ReferenceSaliencyMix):
    """The paper's per-sample SaliencyMix done the obvious way: de-normalise, OpenCV per image, a loop."""

    def __init__(self, beta=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__(beta)
        self.mean = np.array(mean, dtype=np.float32)
        self.std = np.array(std, dtype=np.float32)

    def __call__(self, x, y):
        out = x.clone()
        n, _, h, w = x.shape
        rand_index = torch.randperm(n)
        lams = np.ones(n)
        for i in range(n):
            lam = np.random.beta(self.beta, self.beta)
            src = x[rand_index[i]].cpu().numpy().transpose(1, 2, 0)
            img = np.clip((src * self.std + self.mean) * 255 + 0.5, 0, 255).astype(np.uint8)
            sal = self.cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(img[:, :, ::-1].copy())[1]
            cy, cx = np.unravel_index(np.argmax(sal), sal.shape)
            ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
            y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
            x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
            out[i, :, y0:y1, x0:x1] = x[rand_index[i], :, y0:y1, x0:x1]
            lams[i] = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        return out, y, y[rand_index], torch.from_numpy(lams)


class ReferenceGutout:
    """Gutout as released: Grad-CAM with a backward pass into every parameter (``model.zero_grad()`` then
    ``backward``), in train mode, NumPy maps resized with OpenCV one image at a time, a per-sample loop."""

    def __init__(self, model, t=0.6):
        import cv2
        self.cv2 = cv2
        self.model = copy.deepcopy(model)
        self.t = t

    def __call__(self, x, y):
        model = self.model.train()
        feats = {}
        handle = model.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__('a', o))
        try:
            output = model(x)
            feats['a'].retain_grad()
            one_hot = torch.zeros_like(output)
            one_hot[torch.arange(x.size(0)), y] = 1
            model.zero_grad()
            (one_hot * output).sum().backward(retain_graph=True)
            grads = feats['a'].grad.cpu().numpy()
            acts = feats['a'].detach().cpu().numpy()
        finally:
            handle.remove()
        out = x.clone()
        h, w = x.shape[-2:]
        for i in range(x.size(0)):
            weights = grads[i].mean(axis=(1, 2))
            cam = np.maximum((weights[:, None, None] * acts[i]).sum(0), 0)
            cam = self.cv2.resize(cam, (w, h))
            cam = cam / (cam.max() + 1e-8)
            mask = torch.from_numpy(cam > self.t)
            out[i][:, mask] = 0
        return out, y


class ReferenceAttentiveCutMix:
    """Attentive CutMix as the third-party implementations do it: per-sample and per-cell Python loops."""

    def __init__(self, extractor, top_n=6, size=224):
        self.extractor = extractor.eval()
        self.top_n = top_n
        self.size = size

    def __call__(self, x, y):
        n, _, h, w = x.shape
        rand_index = torch.randperm(n)
        with torch.no_grad():
            xe = F.interpolate(x, size=(self.size, self.size), mode='bilinear', align_corners=False)
            fm = self.extractor.forward_features(xe).mean(1)
        g = fm.shape[-1]
        out = x.clone()
        lams = torch.zeros(n)
        for i in range(n):
            j = int(rand_index[i])
            order = fm[j].flatten().argsort(descending=True)[:self.top_n].tolist()
            mask = torch.zeros(h, w, dtype=torch.bool)
            for k in order:
                r, c = divmod(k, g)
                mask[r * h // g:(r + 1) * h // g, c * w // g:(c + 1) * w // g] = True
            out[i][:, mask] = x[j][:, mask]
            lams[i] = mask.float().mean()
        return out, y, y[rand_index], lams
