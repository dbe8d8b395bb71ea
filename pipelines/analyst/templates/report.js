(function () {
  "use strict";
  function activate() {
    var id = decodeURIComponent(window.location.hash.slice(1));
    var cases = document.querySelectorAll("article.case");
    var active = null;
    for (var i = 0; i < cases.length; i++) {
      var on = cases[i].id === id;
      cases[i].classList.toggle("active", on);
      if (on) { active = cases[i]; }
    }
    document.body.classList.toggle("case-open", active !== null);
    document.body.setAttribute("data-active-case", active ? active.id : "");
    if (active) { window.scrollTo(0, 0); }
  }
  window.addEventListener("hashchange", activate);
  activate();
  var box = document.getElementById("queue-filter");
  if (box) {
    box.addEventListener("input", function () {
      var q = box.value.toLowerCase();
      var rows = document.querySelectorAll("#queue tbody tr");
      for (var i = 0; i < rows.length; i++) {
        rows[i].hidden = q !== "" && rows[i].textContent.toLowerCase().indexOf(q) < 0;
      }
    });
  }
})();
