"""Learner answers as source text, shared by the tests that grade them in notebooks."""

# a mean of per-window perplexities: the sums right, the perplexity wrong (question 1.1)
MEAN_OF_PPL = """def corpus_perplexity(model, ids, block_size):
    with torch.no_grad():
        per = []
        for b in range(0, len(ids), block_size):
            x = ids[b : b + block_size]
            if len(x) < 2:
                break
            nll = F.cross_entropy(model(x[None]).logits[0, :-1].float(), x[1:], reduction="sum").item()
            per.append((nll, len(x) - 1))
    return sum(math.exp(s / n) for s, n in per) / len(per), sum(s for s, _ in per), sum(n for _, n in per)
"""
