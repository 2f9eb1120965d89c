"""What a call is: its selection facts (:class:`SelectionContext`), their buckets and the cache key.

The foundation floor: depends only on :mod:`layerzero.operations` and torch, so registries, kernels,
policies and the dispatcher can all describe calls in the same terms.
"""

from layerzero.context.call_context import CONTEXT_FIELDS, SelectionContext, default_is_causal, dtype_name

__all__ = ["CONTEXT_FIELDS", "SelectionContext", "default_is_causal", "dtype_name"]
