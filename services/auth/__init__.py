"""The auth service: API keys (HMAC-stored, cached per process, invalidated over NATS), the
AuthService and ApiKeyService servicers, and bootstrap administration.

    assembly.build_auth(pool, secret, nc)  -> AuthComponents (authenticator, servicers, close())
    authenticator.Authenticator            -> authenticate("Bearer sk_live_...") -> Principal
    admin.*                                -> create_org / create_user / create_key /
                                              ensure_bootstrap_admin_key (CLI and `up`)
    secret_files.load_server_secret(dir)   -> the HMAC key
"""
