//! The EXAMPLES section of each man page ([`crate::cli::assets`]): per command
//! (`virtpoolctl pool add`), what to type and what it does. Every
//! `virtpoolctl` line here parses (the package test runs each one).

/// One example: what it does, then the command line.
pub type Example = (&'static str, &'static str);

/// The examples of a man page, by the command's path: `virtpoolctl`,
/// `virtpoolctl pool add`, `virtpoold`.
pub fn examples(path: &str) -> &'static [Example] {
    EXAMPLES
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(&[], |(_, e)| e)
}

const EXAMPLES: &[(&str, &[Example])] = &[
    (
        "virtpoolctl",
        &[
            (
                "The agent at a glance, then every pool with its members:",
                "virtpoolctl status && virtpoolctl pools",
            ),
            (
                "Guarantee web-1 4 GiB in pool web and wait for the cycle that applies it:",
                "sudo virtpoolctl allocate web web-1 --memory 4GiB --wait",
            ),
            (
                "Follow what the agent does to the members of pool web:",
                "virtpoolctl events --follow --pool web",
            ),
            (
                "Each pool's free memory in bytes, for a script:",
                "virtpoolctl --json pools | jq -r '.pools[] | \"\\(.name) \\(.free.memory)\"'",
            ),
        ],
    ),
    (
        "virtpoolctl status",
        &[
            (
                "Whether libvirt is reached, the mode, the last cycle and the domain counts:",
                "virtpoolctl status",
            ),
            (
                "How long the last cycle took, for a script:",
                "virtpoolctl --json status | jq .last_cycle.duration_ms",
            ),
        ],
    ),
    (
        "virtpoolctl pools",
        &[
            (
                "Every pool: budget, allocated, free, and each member's target, actual and reason:",
                "virtpoolctl pools",
            ),
            (
                "The pools that have unadmitted members:",
                "virtpoolctl --json pools | jq -r '.pools[] | select(.unadmitted != []) | .name'",
            ),
        ],
    ),
    (
        "virtpoolctl pool",
        &[
            ("One pool:", "virtpoolctl pool show web"),
            (
                "Move web-4 into pool web, waiting for the cycle that applies it:",
                "sudo virtpoolctl pool add web web-4 --wait",
            ),
        ],
    ),
    (
        "virtpoolctl pool show",
        &[
            (
                "Budget, allocation and members of pool web (members added since the last \
                 cycle show as pending):",
                "virtpoolctl pool show web",
            ),
            (
                "Each member's memory target in bytes:",
                "virtpoolctl --json pool show web | jq '.members[] | {name, target: .resources.memory.target}'",
            ),
        ],
    ),
    (
        "virtpoolctl pool add",
        &[
            (
                "Add web-4 to pool web; it joins with the next cycle:",
                "sudo virtpoolctl pool add web web-4",
            ),
            (
                "The same, returning once the cycle that applies it has run:",
                "sudo virtpoolctl pool add web web-4 --wait",
            ),
            (
                "Move db-2 from the pool it is in to pool db (refused without --move):",
                "sudo virtpoolctl pool add db db-2 --move",
            ),
            (
                "A domain named with spaces or starting with '-': quote it, after --:",
                "sudo virtpoolctl pool add --wait -- web 'web with spaces'",
            ),
        ],
    ),
    (
        "virtpoolctl pool remove",
        &[(
            "Take web-4 out of pool web (it is no longer touched), waiting for the cycle:",
            "sudo virtpoolctl pool remove web web-4 --wait",
        )],
    ),
    (
        "virtpoolctl pool create",
        &[
            (
                "A runtime pool of the domains named batch-*, with 8 vCPUs and 16 GiB:",
                "sudo virtpoolctl pool create batch --match 'batch-*' --vcpus 8 --memory 16GiB",
            ),
            (
                "The same from a file shaped like a [pools.NAME] table of the config:",
                "sudo virtpoolctl pool create batch --file batch.toml --wait",
            ),
        ],
    ),
    (
        "virtpoolctl pool history",
        &[
            (
                "Pool web's last hour: budget, allocated, actual and used per resource:",
                "virtpoolctl pool history web",
            ),
            (
                "Its memory allocation over the hour, in bytes:",
                "virtpoolctl --json pool history web | jq -c '.resources.memory.allocated'",
            ),
        ],
    ),
    (
        "virtpoolctl top",
        &[
            (
                "Watch the pools and members, refreshed every 2 s (q quits, f chooses a pool, p pauses it):",
                "virtpoolctl top",
            ),
            (
                "Pool db only, refreshed every second:",
                "virtpoolctl top --pool db --delay 1",
            ),
            (
                "One screen as text, 120 columns wide:",
                "virtpoolctl top --once --width 120",
            ),
        ],
    ),
    (
        "virtpoolctl pool delete",
        &[(
            "Delete the runtime pool batch; its members become unmanaged:",
            "sudo virtpoolctl pool delete batch --wait",
        )],
    ),
    (
        "virtpoolctl domains",
        &[
            ("Every domain, its state, pool and memory:", "virtpoolctl domains"),
            (
                "The domains in no pool (never touched):",
                "virtpoolctl --json domains | jq -r '.domains[] | select(.pool == null) | .name'",
            ),
        ],
    ),
    (
        "virtpoolctl domain",
        &[
            (
                "One domain: its pool, reservation, and per resource the target and its reason:",
                "virtpoolctl domain web-1",
            ),
            (
                "The same by UUID:",
                "virtpoolctl domain 5a3f158f-34aa-4803-8d80-158f34aad803",
            ),
        ],
    ),
    (
        "virtpoolctl plan",
        &[
            (
                "What the next cycle would change, and why (nothing is changed):",
                "virtpoolctl plan",
            ),
            (
                "How many changes it would make:",
                "virtpoolctl --json plan | jq '.actions | length'",
            ),
            (
                "What an edited config would change, checked as a reload would check it (nothing is applied):",
                "virtpoolctl plan --config /etc/virtpool/virtpool.toml.new",
            ),
            (
                "What a reservation would move, before making it:",
                "virtpoolctl plan --what-if 'allocate web web-1 --memory 8GiB'",
            ),
            (
                "What a new 4-vCPU, 8 GiB domain named web-9 would take from its pool:",
                "virtpoolctl plan --with-domain web-9:4:8GiB",
            ),
        ],
    ),
    (
        "virtpoolctl allocate",
        &[
            (
                "Guarantee web-1 4 vCPUs and 8 GiB, waiting for the cycle that applies it:",
                "sudo virtpoolctl allocate web web-1 --vcpus 4 --memory 8GiB --wait",
            ),
            (
                "Reserve disk bandwidth and operations for db-1:",
                "sudo virtpoolctl allocate db db-1 --disk-bytes-sec 200MiB --disk-iops-sec 2000",
            ),
        ],
    ),
    (
        "virtpoolctl release",
        &[
            (
                "Lower web-1's memory reservation by 2 GiB:",
                "sudo virtpoolctl release web web-1 --memory 2GiB",
            ),
            (
                "Clear every reservation of web-1:",
                "sudo virtpoolctl release web web-1",
            ),
        ],
    ),
    (
        "virtpoolctl reconcile",
        &[(
            "Run a cycle now and print its outcome:",
            "sudo virtpoolctl reconcile --wait",
        )],
    ),
    (
        "virtpoolctl reload",
        &[(
            "After editing /etc/virtpool/virtpool.toml: swap it in, or learn why not:",
            "sudo virtpoolctl reload",
        )],
    ),
    (
        "virtpoolctl pause",
        &[
            (
                "Leave the members of pool web untouched (planning goes on):",
                "sudo virtpoolctl pause web",
            ),
            ("Stop changing any domain:", "sudo virtpoolctl pause"),
        ],
    ),
    (
        "virtpoolctl resume",
        &[(
            "Let the agent change pool web's members again, from the next cycle:",
            "sudo virtpoolctl resume web --wait",
        )],
    ),
    (
        "virtpoolctl events",
        &[
            ("What happened in the last ten minutes:", "virtpoolctl events --since 10m"),
            (
                "Follow the events of pool web's members as they come (Ctrl-C ends):",
                "virtpoolctl events --follow --pool web",
            ),
            (
                "The last 20 events about web-1:",
                "virtpoolctl events --domain web-1 --limit 20",
            ),
            (
                "Follow failed actions, one JSON object per line:",
                "virtpoolctl --json events --follow | jq -c 'select(.event == \"action\" and .result == \"error\")'",
            ),
        ],
    ),
    (
        "virtpoolctl metrics",
        &[
            ("The Prometheus metrics, as served:", "virtpoolctl metrics"),
            (
                "Each pool's free memory, from the metrics as JSON:",
                "virtpoolctl --json metrics | jq -c '.metrics[] | select(.name == \"virtpool_pool_free_memory_bytes\")'",
            ),
        ],
    ),
    (
        "virtpoold",
        &[
            (
                "Check the config file against this host and its libvirt domains before (re)starting:",
                "sudo virtpoold --check-config",
            ),
            (
                "One cycle that changes nothing: print what the agent would do:",
                "sudo virtpoold --once --observe",
            ),
            (
                "Run on the libvirt test driver with a config of your own:",
                "virtpoold --config ./test.toml --uri test:///default --once",
            ),
        ],
    ),
];
