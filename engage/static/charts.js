// Draws each chart of the /charts page with vega-embed (served by the app at /charts/vega.js),
// as SVG, with Vega's expression interpreter (no eval: the page's CSP allows none). Marks a
// chart's container data-rendered="true" once drawn, or data-error with the reason.
(function () {
  "use strict";
  var options = {
    renderer: "svg",
    actions: false,
    ast: true,
    expr: window.vega && window.vega.expressionInterpreter,
    defaultStyle: false,
    config: { font: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif" }
  };
  document.querySelectorAll("[data-chart]").forEach(function (element) {
    var spec = JSON.parse(document.getElementById("spec-" + element.dataset.chart).textContent);
    window.vegaEmbed(element, spec, options).then(function () {
      element.dataset.rendered = "true";
    }).catch(function (error) {
      element.dataset.error = String(error);
      element.textContent = "This chart could not be drawn: the table below has its data.";
    });
  });
})();
