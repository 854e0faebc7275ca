"""authd: admits paid authids at haproxy, answers client status, reports refusals (#4, #10).

    main.py            main(): args -> config -> ledger -> AuthDaemon.run()
    map_sync.py        haproxy's runtime map of active authids kept equal to the ledger
    status_answer.py   the client status request (remote.lethean/status), from the ledger
    refusals.py        haproxy's request-log datagrams -> access.refused events
    haproxy_config.py  haproxy.cfg from the node config (TLS front, authid checks, logs)
    squid_config.py    squid.conf from the node config (destination safety after DNS)
    destinations.py    the destination policy both configs are rendered from
    run_haproxy.py     lthn-haproxy: config + map from the ledger, then exec haproxy
    run_squid.py       lthn-squid: config, then exec squid in the foreground
"""
