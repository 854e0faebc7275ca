"""authd: admits paid authids at haproxy, answers client status, reports refusals (#4, #10).

    main.py            main(): args -> config -> ledger -> AuthDaemon.run()
    map_sync.py        haproxy's runtime map of active authids kept equal to the ledger
    status_answer.py   the client status request (remote.lethean/status), from the ledger
    refusal_events.py  haproxy's request-log datagrams -> access.refused events

haproxy's and squid's configs and programs live in services/proxy/; what authd relies on
in them is lthn/haproxy/contract.py, the refusals it answers and reports lthn/refusals.py.
"""
