"""The OpenAI facade: the request pipeline (authenticate, route, adapt, stream, account) behind
both the HTTP face (`OpenAIService`, OpenAI bytes via Envoy) and the typed gRPC face
(`InferenceService`)."""
