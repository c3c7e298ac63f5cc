//! The page's inline style sheet and script (plain JavaScript that reads only the page's own
//! attributes and the URL hash).

/// The page's style sheet.
pub(super) const CSS: &str = r#"
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:16px 20px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:18px 0 6px}h3{font-size:14px;margin:14px 0 4px;color:#444}
.sub{margin:0 0 8px;color:#555}.pick{font-weight:600}select{font-size:14px;margin-left:6px}
table{border-collapse:collapse;margin:10px 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}thead th{background:#f2f2f2}
tbody tr{cursor:pointer}tbody tr:hover{background:#f7f7f7}tr.selected{background:#fff3c4}tr.selected:hover{background:#ffeaa0}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px;border:1px solid #888}
.legend i.host{background:#bbb}.legend i.wait{border:0;border-top:2px dashed #d62828;height:0;width:18px;vertical-align:3px}.legend i.fused{border:2px dashed #7b2cbf;background:none}
.scroll{overflow-x:auto;max-width:100%}svg{display:block;font:11px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
svg.defs{position:absolute;width:0;height:0}
.edge{fill:none;stroke:#aaa;stroke-width:1;marker-end:url(#arrow)}.edge.cross{stroke:#777}
.wait{fill:none;stroke:#d62828;stroke-width:1.6;stroke-dasharray:5 3;marker-end:url(#arrow-wait)}
.fused{fill:none;stroke:#7b2cbf;stroke-width:2;stroke-dasharray:6 3}
.op rect{stroke:#555;stroke-width:.8}.op:hover rect{stroke:#000;stroke-width:2}.op text{fill:#111}.op .sn{text-anchor:end;fill:#333}
.gantt{margin:4px 0 10px}.gt{font-weight:600;fill:#333}.ll{fill:#333}.lbg{fill:#f6f6f6}.tick{stroke:#e2e2e2}.tl{fill:#777;text-anchor:middle;font-size:10px}
.bar{stroke:#fff;stroke-width:.5}.bar:hover{stroke:#000;stroke-width:1.5}.bl{fill:#111;pointer-events:none;font-size:10px}
.gwait{stroke:#d62828;stroke-width:1.2;stroke-dasharray:4 3}.end{stroke:#000;stroke-width:1.5}
.measured .lbg{fill:#eef4fb}
"#;

/// The page's script: the selector, the table's rows and the URL hash switch the sections.
pub(super) const SCRIPT: &str = r#"
(function () {
  'use strict';
  var body = document.body;
  var errors = 0;
  window.addEventListener('error', function () {
    errors += 1;
    body.setAttribute('data-errors', String(errors));
  });
  var select = document.getElementById('algo-select');
  var sections = document.querySelectorAll('section.algo');
  var rows = document.querySelectorAll('#algos tbody tr');
  function show(key) {
    var found = false;
    var i;
    for (i = 0; i < sections.length; i++) {
      if (sections[i].getAttribute('data-algo') === key) { found = true; }
    }
    if (!found) { return false; }
    for (i = 0; i < sections.length; i++) {
      sections[i].hidden = sections[i].getAttribute('data-algo') !== key;
    }
    for (i = 0; i < rows.length; i++) {
      rows[i].classList.toggle('selected', rows[i].getAttribute('data-algo') === key);
    }
    select.value = key;
    body.setAttribute('data-shown', key);
    return true;
  }
  function choose(key) {
    if (key === body.getAttribute('data-shown')) { return; }
    select.value = key;
    select.dispatchEvent(new Event('change'));
  }
  select.addEventListener('change', function () {
    if (!show(select.value)) { select.value = body.getAttribute('data-shown'); return; }
    try { history.replaceState(null, '', '#algo=' + encodeURIComponent(select.value)); } catch (e) { /* file: URLs may refuse */ }
  });
  for (var r = 0; r < rows.length; r++) {
    rows[r].addEventListener('click', function (ev) { choose(ev.currentTarget.getAttribute('data-algo')); });
  }
  function fromHash() {
    var m = /(?:^#|&)algo=([^&]*)/.exec(location.hash);
    if (!m) { return; }
    var key;
    try { key = decodeURIComponent(m[1]); } catch (e) { return; }
    choose(key);
  }
  show(body.getAttribute('data-default')) || (sections.length && show(sections[0].getAttribute('data-algo')));
  fromHash();
  window.addEventListener('hashchange', fromHash);
  body.setAttribute('data-ready', '1');
})();
"#;
