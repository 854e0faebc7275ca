"""sessiond: tracks sessions, charges their time, cuts them when credit is gone (issue #4).

    main.py            main(): args -> config -> ledger -> Sessiond.run()
    sessiond.py        the Daemon: one tick (observe -> rows -> charge) and the cut paths
    charging.py        what to charge per authid and tick (pure decisions + charge_tick)
    session_book.py    open session rows of one kind, in step with what its adapter sees
    proxy_sessions.py  the proxy adapter: haproxy's two stick tables, show sess cut
    vpn_sessions.py    the VPN adapter: lthn-vpnd's client snapshot; cuts by session.kill
    haproxy_answers.py parsers of `show table` (both tables) and `show sess`
    schedule.py        when each authid is next looked at (memory only, #16)

Each adapter reports `session_book.Observed` for its kind into its own book; charging
does not care about kinds (issue #18 added the VPN one without changing either).
"""
