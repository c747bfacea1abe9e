"""fedsim's plug-in API: what crosses the wire and what a plug-in declares.

Strategies (`strategies/`) and partitioners (`partitions/`) import nothing from fedsim but this package; fedsim's
core reads what they declare through it. Modules:
- `keys`: every record name, config key and metric key of fedsim's messages;
- `experiment`: the experiment as it travels in a message;
- `requests`: client requests (`ClientRequest`) and what a client offers them (`LocalRound`);
- `constraints`: parameter constraints (`Interval`, `Options`) and their check;
- `capabilities`: run-time capability Protocols and a strategy's class declarations (`strategy_traits`);
- `group_counts`: the group counts clients with a sensitive attribute report;
- `lazy`: first-use imports for plug-in packages (PEP 562).
"""
