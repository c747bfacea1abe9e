"""The Grid fedsim's ServerApp puts around whatever Grid the engine gives it, so no strategy has to know about nodes
that lie about their partition, random node IDs, or bad replies. Modules:
- `fedsim_grid`: `FedsimGrid`, the Grid strategies see, made of the three parts below;
- `nodes`: node ordering (`NodeRoster`): which nodes take part, in partition order, excluded partitions hidden;
- `discovery`: the identity query and the rules that settle which node holds each partition;
- `filtering`: reply filtering (`filter_replies`): reply checks on a whole batch, the minimum of valid replies;
- `round_log`: what came back from the clients since the recorder last asked (`RoundLog`), as data;
- `wrapper`: `GridWrapper`, the pass-through base of fedsim's Grids (also the deployed ServerApp's `PromptGrid`).
"""
