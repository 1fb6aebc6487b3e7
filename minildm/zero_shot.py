"""Using a trained CLIP without training it further: zero-shot classification,
a linear probe, and retrieval.

    zero-shot   turn each class into prompts ("a large red circle in the center"),
                embed them once, predict the prompt nearest (cosine) to the image
    probe       logistic regression on the frozen image features: what the image
                side knows, whatever the text side says
    retrieval   recall@k from images to captions and back

Taught in notebooks/04_clip.ipynb.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import text
from .clip import MiniCLIP
from .data import shapes


# ----------------------------------------------------------------------------
# Zero-shot prediction: labels -> prompts -> text embeddings -> nearest prompt

ZERO_SHOT_TASKS = ("caption",) + shapes.ATTRIBUTES  # caption = all 324 canonical captions


def prompts_for(task: str, ensemble: bool = True) -> list[list[str]]:
    """The prompts of each class of a task: a list (num_classes) of lists of prompts.

    "caption": class i is all_captions()[i]; with ensemble=True also its
    paraphrases (big/large, upper left/top left, ...). An attribute ("color"...):
    class v gets every canonical caption with that value, the other attributes
    filling the template "a {size} {color} {shape} {where}" (prompt ensembling).
    """
    if task not in ZERO_SHOT_TASKS:
        raise ValueError(f"unknown zero-shot task {task!r}; allowed: {', '.join(ZERO_SHOT_TASKS)}")
    labels = shapes.all_labels()                                          # (324, 4)
    if task == "caption":
        if not ensemble:
            return [[shapes.caption(l)] for l in labels]
        out = []
        for l in labels:
            s, c, z, p = (int(v) for v in l)
            out.append([f"a {sw} {shapes.COLOR_NAMES[c]} {shapes.SHAPES[s]} {ww}"
                        for sw in shapes.SIZE_WORDS[shapes.SIZES[z]] for ww in shapes.WHERE_WORDS[p]])
        return out
    a = shapes.ATTRIBUTES.index(task)
    return [[shapes.caption(l) for l in labels[labels[:, a] == v]]
            for v in range(len(shapes.ATTRIBUTE_VALUES[task]))]


@dataclass
class ZeroShotClassifier:
    """A task's prompts, embedded once: the "weights" of a classifier nobody trained."""
    task: str                            # "caption" or an attribute
    prompt_embeddings: torch.Tensor      # (P, D) unit vectors, every prompt of every class
    prompt_class: torch.Tensor           # (P,) long, the class each prompt belongs to
    num_classes: int                     # K
    scale: float                         # the model's temperature exp(t)

    def scores(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) unit image embeddings -> (N, K) class scores.

        Prompt ensembling in probability space: the score of a class is the
        log-mean-exp over its prompts of scale * cos(image, prompt), i.e. the log
        of its prompts' average softmax weight. (Averaging 108 "circle" captions'
        *embeddings* instead would blur the word "circle" under everything else
        those captions say.)
        """
        logits = self.scale * image_embeddings @ self.prompt_embeddings.T            # (N, P)
        top = logits.amax(dim=1, keepdim=True)                                        # for stability
        one_hot = F.one_hot(self.prompt_class, self.num_classes).float()              # (P, K)
        mean_exp = (logits - top).exp() @ one_hot / one_hot.sum(0)                    # (N, K)
        return mean_exp.log() + top


@torch.no_grad()
def zero_shot_classifier(model: MiniCLIP, task: str = "caption", ensemble: bool = True) -> ZeroShotClassifier:
    """Embed every prompt of every class of `task` once (see prompts_for)."""
    device = next(model.parameters()).device
    groups = prompts_for(task, ensemble)
    prompts = [p for group in groups for p in group]
    emb = torch.cat([model.encode_text(text.tokenize(prompts[i:i + 1024]).to(device)).cpu()
                     for i in range(0, len(prompts), 1024)])                          # (P, D)
    prompt_class = torch.cat([torch.full((len(g),), k) for k, g in enumerate(groups)])
    return ZeroShotClassifier(task, emb, prompt_class, len(groups), model.scale().item())


@torch.no_grad()
def embed_images(model: MiniCLIP, images: torch.Tensor, batch_size: int = 512,
                 features: bool = False) -> torch.Tensor:
    """Images (N, 3, H, W) -> normalised embeddings (N, D) (or raw features), in batches."""
    model.eval()
    device = next(model.parameters()).device
    fn = model.image_features if features else model.encode_image
    return torch.cat([fn(images[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def zero_shot_predict(model: MiniCLIP, images: torch.Tensor, task: str = "caption",
                      classifier: ZeroShotClassifier | None = None) -> torch.Tensor:
    """Predict a class per image (N,): the class whose prompts are most similar to the image.

    task "caption" -> index into shapes.all_captions(); an attribute -> its value index
    (e.g. into shapes.COLOR_NAMES). Taught in notebooks/04_clip.ipynb.
    """
    classifier = classifier or zero_shot_classifier(model, task)
    return classifier.scores(embed_images(model, images)).argmax(dim=1)


@torch.no_grad()
def zero_shot_accuracy(model: MiniCLIP, images: torch.Tensor, labels: torch.Tensor,
                       classifiers: dict | None = None) -> dict:
    """Top-1 accuracy over the 324 captions ("caption") and per attribute.

    classifiers: optional {task: ZeroShotClassifier} computed once, to reuse.
    """
    emb = embed_images(model, images)                                     # (N, D)
    classifiers = classifiers or {}
    out = {}
    for task in ZERO_SHOT_TASKS:
        classifier = classifiers.get(task) or zero_shot_classifier(model, task)
        pred = classifier.scores(emb).argmax(1)
        target = shapes.caption_index(labels) if task == "caption" else labels[:, shapes.ATTRIBUTES.index(task)]
        out[task] = (pred == target).float().mean().item()
    return out


# ----------------------------------------------------------------------------
# Linear probe and retrieval

def linear_probe(model: MiniCLIP, train_images: torch.Tensor, train_labels: torch.Tensor,
                 test_images: torch.Tensor, test_labels: torch.Tensor, C: float = 1.0) -> dict:
    """Logistic regression on frozen image features, one per attribute -> test accuracy.

    The probe asks what the image encoder *knows*, independently of the text side.
    Taught in notebooks/04_clip.ipynb.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    x_train = embed_images(model, train_images, features=True).numpy()      # (N, width), frozen
    x_test = embed_images(model, test_images, features=True).numpy()
    scaler = StandardScaler().fit(x_train)                                   # zero mean, unit variance
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    out = {}
    for a, name in enumerate(shapes.ATTRIBUTES):
        clf = LogisticRegression(C=C, max_iter=2000).fit(x_train, train_labels[:, a].numpy())
        out[name] = float((clf.predict(x_test) == test_labels[:, a].numpy()).mean())
    return out


@torch.no_grad()
def retrieval_recall(model: MiniCLIP, images: torch.Tensor, captions: list[str], labels: torch.Tensor,
                     ks=(1, 5)) -> dict:
    """Image->text and text->image recall@k over N pairs.

    A hit is a retrieved item with the same labels as the query's partner (the
    same caption may be paired with several images). Taught in notebooks/04_clip.ipynb.
    """
    device = next(model.parameters()).device
    sim = embed_images(model, images) @ model.encode_text(text.tokenize(captions).to(device)).cpu().T  # (N, N)
    same = (labels[:, None, :] == labels[None, :, :]).all(-1)             # (N, N)
    out = {}
    for k in ks:
        k_eff = min(k, len(images))
        top_i2t = sim.topk(k_eff, dim=1).indices                          # (N, k) captions per image
        top_t2i = sim.T.topk(k_eff, dim=1).indices                        # (N, k) images per caption
        out[f"image_to_text@{k}"] = same.gather(1, top_i2t).any(1).float().mean().item()
        out[f"text_to_image@{k}"] = same.gather(1, top_t2i).any(1).float().mean().item()
    return out


# ----------------------------------------------------------------------------
# Two-object scenes: zero-shot over the 1,080 captions, and the swap test (lesson 10)

SWAPS = ("attribute", "relation")  # the two wrong captions of the swap test, in column order


def swap_captions(labels: torch.Tensor) -> list[list[str]]:
    """Scene labels (N, 5) -> N x [true, attribute-swapped, relation-swapped] captions.

    attribute-swapped: the colours trade objects ("a blue circle to the left of a red square");
    relation-swapped: the objects trade places in the sentence ("a blue square to the left of
    a red circle"). Both hold exactly the words of the true caption (Winoground, ARO).
    """
    from .data import scenes
    objects_swapped = labels[..., [3, 4, 2, 0, 1]]                        # B rel A instead of A rel B
    return [[scenes.caption(l), scenes.caption(scenes.swap_colors(l)), scenes.caption(o)]
            for l, o in zip(labels, objects_swapped)]


def swap_test_score(similarity: torch.Tensor) -> dict:
    """similarity (N, 3): an image's score for [true, attribute-swapped, relation-swapped].

    The true caption must win *strictly*: a tie (an encoder that cannot tell the captions
    apart) is a failure. Returns the accuracy against each swap and against both at once.
    Taught in notebooks/10_composition.ipynb (an exercise).
    """
    wins = similarity[:, :1] > similarity[:, 1:]                          # (N, 2) beats each swap
    return {"attribute": wins[:, 0].float().mean().item(), "relation": wins[:, 1].float().mean().item(),
            "both": wins.all(1).float().mean().item()}


@torch.no_grad()
def swap_test(model: MiniCLIP, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The swap test: does each scene image (N, 3, H, W) prefer its caption to its two swaps?"""
    device = next(model.parameters()).device
    captions = [c for triple in swap_captions(labels) for c in triple]
    text_emb = model.encode_text(text.tokenize(captions).to(device)).cpu().view(len(images), 3, -1)  # (N, 3, D)
    similarity = torch.einsum("nd,nkd->nk", embed_images(model, images), text_emb)                 # (N, 3)
    return swap_test_score(similarity)


@torch.no_grad()
def scenes_zero_shot(model: MiniCLIP, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 over the 1,080 scene captions: right when the nearest caption describes the scene
    ("A left of B" or its converse "B right of A", the same layout)."""
    from .data import scenes
    device = next(model.parameters()).device
    captions = scenes.all_captions()
    text_emb = torch.cat([model.encode_text(text.tokenize(captions[i:i + 540]).to(device)).cpu()
                          for i in range(0, len(captions), 540)])        # (1080, D)
    pred = (embed_images(model, images) @ text_emb.T).argmax(1)           # (N,)
    ok = (pred == scenes.caption_index(labels)) | (pred == scenes.caption_index(scenes.converse(labels)))
    return ok.float().mean().item()
