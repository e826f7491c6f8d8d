"""Rate limits: the rules an admin sets (`/v1/rate-limit-rules`) and the rule book the request path
reads them from (docs/reference.md §4 "Rate-limit rules").

    rule_servicer.rate_limit_rule_registration(...) -> RateLimitRuleService, served by the auth process
    rule_manager.RuleManager                        -> validation and scoping of create/list/delete
    rule_repository                                 -> all SQL of rate_limit_rules, with audit rows
    rules.RuleBook                                  -> for_request(...) -> [LimitSpec], cached per
                                                       organization, invalidated over NATS
"""
