"""One line of plain words for every term the command line and the logs print (``phantomlens explain
TERM``), and a second where a fact of several tokens reads the term differently.

The one table of the package's vocabulary: ``phantomlens explain`` prints from it, and every command's
output ends with a hint naming the terms of this table it printed. The wording follows
docs/method.md (the reference); a change of meaning there is a change here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from phantomlens.errors import PhantomLensError


@dataclass(frozen=True)
class Term:
    """A term of the output: its name, the other spellings it is asked for by, its meaning, the
    pattern that finds it in printed output (None: only asked for, never hinted at), and how it
    reads for a fact of several tokens when that differs ('' when it does not)."""

    name: str
    meaning: str
    aliases: tuple[str, ...] = ()
    shows: str | None = None
    facts: str = ""

    @property
    def label(self) -> str:
        """The name, with its symbol when it has one (``phi (Φ)``)."""
        symbol = next((a for a in self.aliases if not a.isascii()), None)
        return f"{self.name} ({symbol})" if symbol else self.name


#: For a fact of several tokens the readout is taken at one position, the flip on the whole answer.
_AT_BRANCH = "read at the branch position k* (the first token where target and competitor differ)"
_SEQUENCE = "success still means the sequence margin ℓ(target) − ℓ(competitor) ends positive"

TERMS: tuple[Term, ...] = (
    Term("margin", "by how many logits the target leads the competitor, z(target) − z(competitor) "
         "(for answers of several tokens ℓ(target) − ℓ(competitor)); positive means flipped",
         shows=r"\bmargin\b"),
    Term("flip", "the target overtakes the competitor: the margin turns positive; it holds when it is "
         "still positive after the last update", ("flipped",), r"\bflip(ped)?\b"),
    Term("silent", "a failed run (kinematic or structural) whose loss still fell by at least "
         "silent_loss_drop (10%): the loss curve says it is learning, yet the target never wins",
         ("silent failure", "silent_failure"), r"(?i)\bsilent\b"),
    Term("outcome", "how a run ended: success, kinematic, structural or diverged (see each)",
         shows=r"\boutcomes?\b"),
    Term("success", "the target leads the competitor at the end of the run", shows=r"\bsuccess\b"),
    Term("kinematic", "a failure in which the geometry did not work against the target: the drag did "
         "not worsen, the signal just never got there", shows=r"\bkinematic\b",
         facts=f"judged on the readout at the branch position k* (its drag); {_SEQUENCE}"),
    Term("structural", "a failure in which the drag fell by more than drag_worsening (0.005): the rest "
         "of the vocabulary pulled Φ towards the competitor", shows=r"\bstructural\b",
         facts=f"judged on the readout at the branch position k* (its drag); {_SEQUENCE}"),
    Term("diverged", "the loss or logits became non-finite, or the loss rose above the cut-off (twice as "
         "bad as a uniform guess); the run stops there and is recorded", ("divergence",),
         r"(?i)\bdiverged\b"),
    Term("jump", "a catapult-like step (or two-step window) in which Φ changed suddenly: |ΔΦ| ≥ "
         "jump_min_abs, robust z ≥ jump_min_z, and most of the change nearby", ("jumps", "catapult"),
         r"\bjumps?\b"),
    Term("phantom", "a jump of Φ made by the softmax readout (the probabilities moving over fixed "
         "geometry: |R| ≥ phantom_fraction·|ΔΦ|), not by the embeddings moving",
         ("phantoms", "phantom jump"), r"(?i)\bphantoms?\b"),
    Term("geometric", "a jump that is not a phantom: much of its ΔΦ came from the embeddings moving "
         "(Γ and X), not from the readout R", ("real",), r"\bgeometric\b"),
    Term("phi", "the order parameter Φ = F(target) − F(competitor) = signal + drag, in [−1, 1]: whether "
         "the prediction leans geometrically towards the target (> 0) or the competitor (< 0)",
         ("Φ", "order parameter"), r"Φ", _AT_BRANCH),
    Term("signal", "commitment to the target over the competitor, damped by how alike they are: "
         "S = (p_c − p_n)(1 − G²); positive exactly when flipped", ("S",), r"\bsignal\b",
         f"{_AT_BRANCH}, while flipped uses the sequence margin: a fact can have positive signal and "
         "not be flipped"),
    Term("drag", "how the rest of the vocabulary (the bulk) leaks into Φ: D = Σ p_i (G_ic² − G_in²) "
         "over the other tokens; negative when the bulk sits nearer the competitor", ("D",),
         r"\bdrag\b", _AT_BRANCH),
    Term("readout", "R, the part of a change of Φ that comes from the probabilities alone (old "
         "geometry); ΔΦ = R + Γ + X exactly", ("R",), r"\bR/ΔΦ\b"),
    Term("gamma", "Γ, the part of a change of Φ that comes from the embeddings moving (old "
         "probabilities); X is the cross term; both are exactly 0 under LoRA",
         ("Γ", "X", "cross"), r"Γ"),
    Term("overlap", "how alike two words' embedding directions are: the cosine G = ê_c·ê_n",
         ("G", "G_tc", "overlap_tc"), r"\b(G_tc|overlap)\b"),
    Term("purity", "how concentrated the predicted state ρ is: Tr ρ² (1 = a single token direction)",
         shows=r"\bpurity\b"),
    Term("eta_c", "the critical learning rate η_c: the smallest peak LR whose run ends in success within "
         "T steps (for a fact set, at which a fraction q of the facts end flipped)",
         ("η_c", "critical lr", "critical learning rate"), r"η_c|η̂_c|\beta_c\b"),
    Term("eta_max", "the smallest peak LR at which a run diverges", ("η_max",), r"\beta_max\b"),
    Term("kappa", "κ, the factor a prediction of η_c is divided by, fitted on measured sweeps "
         "(phantomlens calibrate): κ = predicted / measured, 1 when the formula is exact",
         ("κ",), r"κ"),
    Term("replay", "the prediction that re-enacts the run: its own optimiser takes the T steps on a "
         "copy with the loss gradient measured K times (--refreshes) and interpolated between; η̂_c "
         "is the LR whose replayed final margin is 0 (about 20 passes at K = 6, plus T optimiser "
         "steps per replayed LR)", ("refreshes",), r"replay"),
    Term("class", "the architecture class from the token states' bulk geometry: A (crowded, χ/d ≥ "
         "0.125; LoRA predicted not sufficient) or B (open; LoRA predicted sufficient)",
         ("geometry class", "architecture class"), r"(?m)^class\b"),
    Term("crowding", "χ = d·E[G²] over random token pairs: 1 for an isotropic cloud, ≫ 1 when every "
         "token shares a common direction", ("χ", "chi"), r"χ"),
    Term("branch", "k*, the first answer position where target and competitor differ; a fact's "
         "readout is taken there", ("k*", "branch position"), r"\bbranch\b|\bk\*"),
    Term("margin_safe", "early stopping's rule: the flip is secure once every watched margin has stayed "
         "≥ margin_safe (1 logit) for patience (3) consecutive steps",
         ("secure flip", "secure", "patience", "early stop"), r"\bsecure\b|margin_safe"),
    Term("joint", "facts trained together: one optimiser step per step on the mean loss of all facts; "
         "each fact keeps its own outcome", ("fact set",), r"(?i)\bjoint\b|\bin set\b"),
    Term("quantile", "q, the fraction of a fact set that must end flipped: η_c(F, q) is the smallest "
         "peak LR at which at least q of the facts flip", ("q",), r"\bq\s*=|\bquantile\b"),
    # The scalars that logs (PhantomCallback, phantomlens.probe) and stored results name.
    Term("loss", "what training minimises: the cross-entropy −log p of the target's token (a fact: the "
         "mean over its answer's tokens; a fact set: the mean over its facts)"),
    Term("p_target", "the probability of the target's token (p_competitor: the competitor's) at the "
         "position read: the next token of a context, the branch position k* of a fact",
         ("p_competitor", "p(target)", "p(competitor)"), r"\bp\((target|competitor)\)"),
    Term("rank_target", "the target token's rank among all tokens at the position read (1 = the top "
         "prediction); rank_competitor likewise", ("rank_competitor", "rank_t", "rank_c"),
         r"\brank_[tc]\b"),
    Term("logp_target", "ℓ, the log-probability of a whole answer given the prompt, teacher-forced "
         "(logp_competitor: the competitor's); a fact's margin is ℓ(target) − ℓ(competitor)",
         ("logp_competitor", "ℓ", "log p"), r"ℓ\("),
    Term("margin_branch", "a fact's one-token margin z(target) − z(competitor) at the branch position "
         "k*; its sign can differ from the sequence margin's, which decides the flip"),
    Term("loss_branch", "a fact's cross-entropy −log p(target's token) at the branch position k* alone "
         "(loss is the mean over all the target's tokens)"),
    Term("fraction_flipped", "the fraction of a fact set's facts whose sequence margin is positive at "
         "the end (n_flipped of n_facts)", ("n_flipped",)),
    Term("all_flipped", "1 at a step when every watched context or fact is flipped (margin > 0), else 0"),
    Term("n_silent_failures", "how many facts of a set ended as silent failures (see silent)"),
    Term("secure_steps", "consecutive observations at which every watched margin has stayed ≥ "
         "margin_safe; early stopping stops the run once it reaches patience (3)"),
    Term("stopped", "the run ended before its last step: early stopping found the flip secure (see "
         "margin_safe), or a watched value diverged; stop_reason says which, and when",
         ("stop_reason", "stopped_early"), r"(?m)^stopped\b"),
    Term("symmetry_breaking", "target and competitor separating abruptly in embedding space at a jump: "
         "their motion per unit LR above symmetry_ratio times its median before",
         ("sym.break", "symmetry"), r"\bsym\.break\b"),
)  # fmt: skip


def _key(text: str) -> str:
    return re.sub(r"[\s_-]+", "_", text.strip().casefold())


def _by_key() -> dict[str, Term]:
    found = {_key(term.name): term for term in TERMS}
    for term in TERMS:
        for alias in term.aliases:
            found.setdefault(_key(alias), term)  # a name wins over another term's alias
    return found


_BY_KEY = _by_key()


def lookup(word: str) -> Term:
    """The term ``word`` names (its name or any alias, case, spaces and hyphens aside), or an error."""
    term = _BY_KEY.get(_key(word))
    if term is None:
        raise PhantomLensError(
            f"no term {word!r} in the glossary; known terms: {', '.join(t.name for t in TERMS)}"
        )
    return term


def explain(words: list[str] | None = None) -> str:
    """One line per term asked for (every term when none is), aligned: ``name  meaning``; a term
    that reads differently for a fact of several tokens gets a second, indented line saying how."""
    terms = list(dict.fromkeys(lookup(w) for w in words)) if words else list(TERMS)
    width = max(len(t.label) for t in terms)
    lines = []
    for t in terms:
        lines.append(f"{t.label.ljust(width)}  {t.meaning}")
        if t.facts:
            lines.append(f"{'':{width}}  for a fact of several tokens: {t.facts}")
    return "\n".join(lines)


def explain_known(words: list[str]) -> tuple[str, PhantomLensError | None]:
    """``explain`` of the words the glossary knows ('' if none; every term when no word is given),
    and the error naming the words it does not know (None when it knows them all)."""
    unknown = [w for w in words if _key(w) not in _BY_KEY]
    known = [w for w in words if _key(w) in _BY_KEY]
    text = explain(known) if known or not words else ""
    if not unknown:
        return text, None
    unknown = list(dict.fromkeys(unknown))
    names = ", ".join(repr(w) for w in unknown)
    return text, PhantomLensError(
        f"no term{'s' if len(unknown) > 1 else ''} {names} in the glossary; "
        f"known terms: {', '.join(t.name for t in TERMS)}"
    )


def terms_in(text: str) -> list[str]:
    """The names of the terms ``text`` shows, in the table's order."""
    return [t.name for t in TERMS if t.shows and re.search(t.shows, text)]


def hint(text: str) -> str:
    """The line that ends a command's output: how to look up the terms it printed ('' if none)."""
    names = terms_in(text)
    return f"terms: phantomlens explain {' '.join(names)}" if names else ""
