"""Provider adapters (docs/architecture.md §5): translation between our OpenAI-shaped messages and each
provider's wire format, over one shared HTTP/SSE client.

    servicer.AdapterServicer      the gRPC service (thin): Chat, Embed, Complete, Image
    registry.AdapterRegistry      kind -> adapter module: the only switch
    base.ProviderAdapter          the interface: chat(), embed(); optional complete() (legacy
                                  completions) and image() (generation, edit, variation), which
                                  only `openai` defines; elsewhere the servicer refuses with
                                  UNSUPPORTED_PARAMETER so routing tries the next candidate
    capabilities                  which request fields each kind honours, and the refusal

One layout per provider kind:

    <kind>.py             the adapter: what it honours, and its calls through UpstreamClient
    <kind>_translate.py   our typed request -> the provider's request (pure)
    <kind>_answers.py     the provider's answers and stream events -> OpenAI objects (pure)
    <kind>_wire.py        the provider's wire types and error-body decoding

    openai                openai and every openai_compatible server: openai_translate (requests,
                          and the stamping of every provider's answers), openai_images, openai_wire
    anthropic             Messages API: anthropic_translate / _answers / _wire
    google                Gemini API: google_translate / _answers / _wire
    cohere                API v2: cohere_translate / _answers / _wire

Shared pieces, each small:

    upstream.UpstreamClient       request building (auth, X-Request-Id, timeouts), the call, and
                                  the mapping of a failed answer to GatewayError
    upstream_errors               the one table from an upstream's status to our error reasons
    openai_shapes                 OpenAI response objects built from another provider's answer
    json_values                   protobuf values as plain JSON, upstream JSON parsing
    data_urls                     base64 data URLs of inline images and files
    http.HttpClient / sse.SSEDecoder / credentials.CredentialResolver   plumbing
"""

from services.adapters.servicer import AdapterServicer

__all__ = ["AdapterServicer"]
