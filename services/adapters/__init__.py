"""Provider adapters (DESIGN.md §5): translation between our OpenAI-shaped messages and each
provider's wire format, over one shared HTTP/SSE client.

    servicer.AdapterServicer      the gRPC service (thin)
    registry.AdapterRegistry      kind -> adapter: the only switch
    base.ProviderAdapter          the interface: chat(), embed()
    openai.OpenAIAdapter          openai and every openai_compatible server
    openai_translate / openai_wire / upstream_errors   translation, wire types, the status table
    http.HttpClient / sse.SSEDecoder / credentials.CredentialResolver   shared plumbing
"""

from services.adapters.servicer import AdapterServicer

__all__ = ["AdapterServicer"]
