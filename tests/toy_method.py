"""A soup method defined in one file, as a user would add one: the first ingredient's classifier, the mean of all
ingredients elsewhere. Importing this module registers it; nothing else in hf_soups is edited."""

from hf_soups.recipes import MethodContext, MethodResult, Needs, register_method


@register_method("head_from_first", paper="https://arxiv.org/abs/2203.05482", needs=Needs(),
                 description="The first ingredient's classifier, the mean of all ingredients elsewhere.")
def head_from_first(ctx: MethodContext) -> MethodResult:
    head = [tp.name for tp in ctx.plan.tensors if tp.name.startswith("classifier.")]
    plan = ctx.plan.with_sources({name: 0 for name in head})  # elsewhere: ctx.plan's weights, 1/K each
    return MethodResult(plan, parameters={"head": head, "source": ctx.names[0]})
