"""VPN mode (issue #18): OpenVPN 2.6 admitting paid authids over its management interface.

    run_openvpn.py        lthn-openvpn: certificates, server config, the nftables table,
                          then OpenVPN in the foreground; the table goes when OpenVPN stops
    openvpn_config.py     renders OpenVPN's server config from the node config
    egress.py             the nftables table `inet lthn_vpn`: forwarding, NAT, egress filter
    main.py               lthn-vpnd: main(): args -> config -> ledger -> Vpnd.run()
    vpnd.py               the Daemon holding OpenVPN's one management connection
    management.py         parser of the management stream (>CLIENT: blocks, replies)
    management_link.py    the connection: commands in order, each answer to its asker
    admission.py          the auth decision for a client's username/password (pure)
    bans.py               firewalld's bans in force, checked at login (addresses, networks)
    clients.py            live clients, and the snapshot file sessiond charges from

sessiond charges VPN sessions from the snapshot (services/sessiond/vpn_sessions.py) and
asks lthn-vpnd to cut them with a `session.kill` bus message.
"""
