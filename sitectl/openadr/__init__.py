"""OpenADR 3 VEN (issue #20.2): the grid operator's limits and prices, and the site's reports.

Modules: `client` (the VTN's API through the `openadr3` library: OAuth2 token, paging, errors),
`mapping` (events -> `sitectl.limits.GridLimit` windows and `sitectl.prices.PriceWindow`s),
`reports` (the grid meter's readings -> the reports events ask for), `webhook` (the endpoint the
VTN's subscription calls) and `ven` (the component: poll, publish, heartbeat, alarms).
Its configuration is ``grid_signals.openadr`` (`sitectl.config.OpenAdrConfig`).
"""
