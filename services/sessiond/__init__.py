"""sessiond: tracks sessions, charges their time, cuts them when credit is gone (issue #4).

    main.py            main(): args -> config -> ledger -> Sessiond.run()
    sessiond.py        the Daemon: one tick (observe -> rows -> charge) and the cut paths
    charging.py        what to charge per authid and tick (pure decisions + charge_tick)
    session_book.py    open session rows of one kind, in step with what its adapter sees
    proxy_sessions.py  the proxy adapter: haproxy's stick table, request log, show sess cut
    client_map.py      client ip:port -> authid, from haproxy's request-log datagrams
    haproxy_answers.py parsers of `show table` and `show sess`

A VPN adapter (ROADMAP) reports `session_book.Observed` and cuts with client-kill; the
book and charging do not change.
"""
